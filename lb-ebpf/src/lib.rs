//! What lb's XDP program is built on and the floor programs share with it:
//! access to the frame behind the shared parser's `Frame` trait.
#![no_std]

pub mod frame;
