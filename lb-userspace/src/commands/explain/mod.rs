//! `lb explain`: what the data plane would do with a client's next packet
//! to a VIP, and why. `gather` reads the pinned maps into a snapshot and
//! runs the data plane's own decision over it (`lb_common::decide`: flow
//! table, pin, sticky session, Maglev, least-load), `render` says what it
//! decided and why, with the worker's MAC as the data plane's last check;
//! so it works without a controller and names the worker the data plane
//! would. It changes nothing: the data plane refreshes sessions and
//! records flows as it goes, an explanation does not.

mod gather;
mod render;

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
};

use crate::{
    commands::cli::{ExplainArgs, OutputFormat},
    service::{self, Protocol, Vip},
};

/// Why `lb explain` can't answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExplainError {
    /// The VIP did not parse.
    #[error(transparent)]
    Vip(#[from] service::ParseError),
    /// `--proto` says otherwise than the VIP's /tcp or /udp.
    #[error("{vip} is {vip_proto}, but --proto says {flag}")]
    ProtoDisagrees {
        /// The VIP as given.
        vip: String,
        /// Its protocol.
        vip_proto: &'static str,
        /// What --proto said.
        flag: &'static str,
    },
    /// The client is neither ADDRESS nor ADDRESS:PORT.
    #[error("`{0}` is not a client ADDRESS or ADDRESS:PORT (IPv6 as [ADDRESS]:PORT)")]
    BadClient(String),
    /// Client port 0.
    #[error("port 0 in `{0}`: a client port is 1 to 65535 (leave it out for a new connection)")]
    ClientPortZero(String),
    /// A client of the other family: it can't reach the VIP.
    #[error("client {client} is {client_family}, but VIP {vip} is {vip_family}")]
    WrongFamily {
        /// The client.
        client: IpAddr,
        /// The VIP.
        vip: Vip,
        /// The client's family.
        client_family: &'static str,
        /// The VIP's family.
        vip_family: &'static str,
    },
    /// The data plane has no such VIP.
    #[error("no VIP {0} in this instance (see `lb vip list`)")]
    UnknownVip(Vip),
}

/// Prints the explanation of `args` from the maps pinned under `pin_dir`.
pub fn explain(args: &ExplainArgs, output: OutputFormat, pin_dir: &Path) -> anyhow::Result<()> {
    let vip = parse_vip(&args.vip, args.proto)?;
    let (client, port) = parse_client(&args.client)?;
    check_family(client, &vip)?;
    let view = gather::gather(pin_dir, vip, client, port)?;
    let explanation = view.explain(&view.trace()?);
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string(&explanation)?),
        OutputFormat::Table => print!("{}", render::text(&explanation)),
    }
    Ok(())
}

/// A VIP as `ADDRESS:PORT/PROTO`, or `ADDRESS:PORT` with `--proto`
/// (default tcp).
pub fn parse_vip(text: &str, proto: Option<Protocol>) -> Result<Vip, ExplainError> {
    if !text.contains('/') {
        let proto = proto.unwrap_or(Protocol::Tcp);
        return Ok(format!("{text}/{proto}").parse()?);
    }
    let vip: Vip = text.parse()?;
    match proto {
        Some(flag) if flag != vip.proto => Err(ExplainError::ProtoDisagrees {
            vip: text.to_owned(),
            vip_proto: vip.proto.into(),
            flag: flag.into(),
        }),
        _ => Ok(vip),
    }
}

/// A client as `ADDRESS` or `ADDRESS:PORT` (`[ADDRESS]:PORT` or
/// `[ADDRESS]` for IPv6).
pub fn parse_client(text: &str) -> Result<(IpAddr, Option<u16>), ExplainError> {
    if let Ok(socket) = text.parse::<SocketAddr>() {
        if socket.port() == 0 {
            return Err(ExplainError::ClientPortZero(text.to_owned()));
        }
        return Ok((socket.ip(), Some(socket.port())));
    }
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    bare.parse()
        .map(|addr| (addr, None))
        .map_err(|_| ExplainError::BadClient(text.to_owned()))
}

fn check_family(client: IpAddr, vip: &Vip) -> Result<(), ExplainError> {
    if client.is_ipv4() == vip.addr.is_ipv4() {
        return Ok(());
    }
    Err(ExplainError::WrongFamily {
        client,
        vip: *vip,
        client_family: service::family_word(client),
        vip_family: service::family_word(vip.addr),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vips_and_clients_parse_or_say_why_not() {
        let vip = parse_vip("192.0.2.100:80", Some(Protocol::Udp)).unwrap();
        assert_eq!(vip.to_string(), "192.0.2.100:80/udp");
        assert_eq!(
            parse_vip("192.0.2.100:80", None).unwrap().proto,
            Protocol::Tcp
        );
        assert!(matches!(
            parse_vip("192.0.2.100:80/tcp", Some(Protocol::Udp)),
            Err(ExplainError::ProtoDisagrees { .. })
        ));
        assert!(parse_vip("192.0.2.100:80/tcp", Some(Protocol::Tcp)).is_ok());
        assert!(parse_vip("nonsense", None).is_err());
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(parse_client("2001:db8::1").unwrap(), (v6, None));
        assert_eq!(parse_client("[2001:db8::1]").unwrap(), (v6, None));
        assert_eq!(parse_client("[2001:db8::1]:443").unwrap(), (v6, Some(443)));
        assert!(matches!(
            parse_client("192.0.2.1:0"),
            Err(ExplainError::ClientPortZero(_))
        ));
        assert!(matches!(
            parse_client("192.0.2.1:99999"),
            Err(ExplainError::BadClient(_))
        ));
        let error = check_family(v6, &vip).unwrap_err().to_string();
        assert_eq!(
            error,
            "client 2001:db8::1 is IPv6, but VIP 192.0.2.100:80/udp is IPv4"
        );
    }
}
