//! Network interface lookup, by name and by index.

use rustix::net::{
    netdevice::{index_to_name, name_to_index},
    socket, AddressFamily, SocketType,
};

/// The index of interface `name` in this network namespace, if it exists.
pub fn index_of(name: &str) -> Option<u32> {
    name_to_index(any_socket()?, name).ok()
}

/// The name of interface `ifindex` in this network namespace, if it
/// exists.
pub fn name_of(ifindex: u32) -> Option<String> {
    index_to_name(any_socket()?, ifindex).ok()
}

/// A socket in this network namespace: the interface ioctls need one, of
/// any kind.
fn any_socket() -> Option<rustix::fd::OwnedFd> {
    socket(AddressFamily::INET, SocketType::DGRAM, None).ok()
}
