//! The dns health check's side of the wire: the settings people write
//! (name, type, rcode), the query it sends and what it makes of a reply.
//! hickory-proto encodes and decodes the messages.

use std::{
    fmt,
    hash::{BuildHasher as _, RandomState},
    str::FromStr,
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query as Question},
    rr::{Name, RecordType},
};
use serde::{Deserialize, Serialize};

/// The response codes a reply without EDNS can carry, by their names in
/// RFC 1035 and RFC 2136.
const RCODES: [(&str, u16); 11] = [
    ("NOERROR", 0),
    ("FORMERR", 1),
    ("SERVFAIL", 2),
    ("NXDOMAIN", 3),
    ("NOTIMP", 4),
    ("REFUSED", 5),
    ("YXDOMAIN", 6),
    ("YXRRSET", 7),
    ("NXRRSET", 8),
    ("NOTAUTH", 9),
    ("NOTZONE", 10),
];

/// A dns check setting that did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DnsError {
    /// Not a domain name.
    #[error("{name:?} is not a DNS name ({reason}): write one such as health.example.com, or . for the root")]
    Name {
        /// The text.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A record type hickory-proto doesn't know.
    #[error("unknown DNS type {0:?}: use A, AAAA, CNAME, MX, NS, PTR, SOA, SRV, TXT or another type's name")]
    Type(String),
    /// A response code name not in [`RCODES`].
    #[error("unknown DNS rcode {0:?}: use NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED, YXDOMAIN, YXRRSET, NXRRSET, NOTAUTH or NOTZONE")]
    Rcode(String),
}

/// The name a dns check asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DnsName(Name);

impl FromStr for DnsName {
    type Err = DnsError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |reason: String| DnsError::Name {
            name: text.to_owned(),
            reason,
        };
        // hickory reads "" as the root; an empty setting is a mistake.
        if text.is_empty() {
            return Err(bad("empty".into()));
        }
        let mut name = Name::from_utf8(text).map_err(|e| bad(e.to_string()))?;
        name.set_fqdn(true);
        Ok(Self(name))
    }
}

impl fmt::Display for DnsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The record type a dns check asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DnsType(RecordType);

impl Default for DnsType {
    fn default() -> Self {
        Self(RecordType::A)
    }
}

impl FromStr for DnsType {
    type Err = DnsError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        RecordType::from_str(&text.to_ascii_uppercase())
            .map(Self)
            .map_err(|_| DnsError::Type(text.to_owned()))
    }
}

impl fmt::Display for DnsType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The response code that passes a dns check.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DnsRcode(u16);

impl FromStr for DnsRcode {
    type Err = DnsError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        RCODES
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(text))
            .map(|(_, code)| Self(*code))
            .ok_or_else(|| DnsError::Rcode(text.to_owned()))
    }
}

impl fmt::Display for DnsRcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match RCODES.iter().find(|(_, code)| *code == self.0) {
            Some((name, _)) => f.write_str(name),
            None => write!(f, "{}", self.0),
        }
    }
}

macro_rules! text_serde {
    ($($t:ty),*) => {$(
        impl TryFrom<String> for $t {
            type Error = DnsError;

            fn try_from(text: String) -> Result<Self, Self::Error> {
                text.parse()
            }
        }

        impl From<$t> for String {
            fn from(value: $t) -> Self {
                value.to_string()
            }
        }
    )*};
}

text_serde!(DnsName, DnsType, DnsRcode);

/// What a dns check asks, and the answer that passes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    /// The name asked for.
    pub name: DnsName,
    /// Its record type.
    pub rtype: DnsType,
    /// The response code that passes.
    pub rcode: DnsRcode,
}

impl Query {
    /// The query datagram, with id `id` and recursion desired (as `dig`
    /// sends it, so a resolver resolves rather than answering from
    /// nothing).
    pub fn encode(&self, id: u16) -> Result<Vec<u8>, String> {
        let mut message = Message::new(id, MessageType::Query, OpCode::Query);
        message.metadata.recursion_desired = true;
        message.add_query(Question::query(self.name.0.clone(), self.rtype.0));
        message
            .to_vec()
            .map_err(|e| format!("cannot encode the query: {e}"))
    }

    /// Whether `reply` passes the check of query `id`, and why; `None` for
    /// a reply to another query, which the check ignores.
    pub fn judge(&self, id: u16, reply: &[u8]) -> Option<(bool, String)> {
        let Ok(message) = Message::from_vec(reply) else {
            return Some((false, "malformed reply".into()));
        };
        if message.metadata.id != id {
            return None;
        }
        if message.metadata.message_type != MessageType::Response {
            return Some((false, "malformed reply: a query, not a response".into()));
        }
        let rcode = DnsRcode(message.metadata.response_code.into());
        Some((rcode == self.rcode, format!("rcode {rcode}")))
    }
}

/// A fresh query id. Unpredictable (std's per-process random hash keys),
/// so a late reply to an earlier check, or a guess, is not taken for this
/// check's answer.
pub fn random_id() -> u16 {
    RandomState::new().hash_one(()) as u16
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::ResponseCode;

    use super::*;

    fn query(name: &str) -> Query {
        Query {
            name: name.parse().unwrap(),
            rtype: DnsType::default(),
            rcode: DnsRcode::default(),
        }
    }

    fn reply(id: u16, rcode: ResponseCode) -> Vec<u8> {
        let mut message = Message::response(id, OpCode::Query);
        message.metadata.response_code = rcode;
        message.to_vec().unwrap()
    }

    #[test]
    fn settings_parse_and_print_back() {
        for name in ["health.example.com.", ".", "_dns._udp.example."] {
            assert_eq!(name.parse::<DnsName>().unwrap().to_string(), name);
        }
        assert_eq!(
            "example.com".parse::<DnsName>().unwrap().to_string(),
            "example.com."
        );
        assert_eq!("aaaa".parse::<DnsType>().unwrap().to_string(), "AAAA");
        assert_eq!(DnsType::default().to_string(), "A");
        assert_eq!("nxdomain".parse::<DnsRcode>().unwrap(), DnsRcode(3));
        assert_eq!(DnsRcode::default().to_string(), "NOERROR");
    }

    #[test]
    fn bad_settings_say_what_is_wrong() {
        for name in ["", "a b.example", "a..b", &"x".repeat(64)] {
            let error = name.parse::<DnsName>().unwrap_err().to_string();
            assert!(error.contains("is not a DNS name"), "{name}: {error}");
        }
        let error = "AXXX".parse::<DnsType>().unwrap_err().to_string();
        assert!(error.contains("unknown DNS type \"AXXX\""), "{error}");
        let error = "NOPE".parse::<DnsRcode>().unwrap_err().to_string();
        assert!(error.contains("unknown DNS rcode \"NOPE\""), "{error}");
    }

    #[test]
    fn the_query_asks_for_the_name_and_type() {
        let mut asked = query("health.example.com");
        asked.rtype = "TXT".parse().unwrap();
        let message = Message::from_vec(&asked.encode(0x1234).unwrap()).unwrap();
        assert_eq!(message.metadata.id, 0x1234);
        assert!(message.metadata.recursion_desired);
        let question = &message.queries[0];
        assert_eq!(question.name().to_string(), "health.example.com.");
        assert_eq!(question.query_type(), RecordType::TXT);
    }

    #[test]
    fn replies_are_judged_by_id_and_rcode() {
        let noerror = query("example.com");
        assert_eq!(
            noerror.judge(7, &reply(7, ResponseCode::NoError)),
            Some((true, "rcode NOERROR".into()))
        );
        assert_eq!(
            noerror.judge(7, &reply(7, ResponseCode::NXDomain)),
            Some((false, "rcode NXDOMAIN".into()))
        );
        assert_eq!(noerror.judge(7, &reply(8, ResponseCode::NoError)), None);
        assert_eq!(
            noerror.judge(7, b"\x00\x07"),
            Some((false, "malformed reply".into()))
        );
        let echoed = noerror.encode(7).unwrap();
        assert!(!noerror.judge(7, &echoed).unwrap().0, "a query is no reply");
    }
}
