//! Small helpers over coap-lite's message codec: URLs, requests, responses, block options.

use coap_lite::block_handler::BlockValue;
use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};

/// RFC 7252 §4.8: ACK_TIMEOUT.
pub const ACK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// RFC 7252 §4.8: MAX_RETRANSMIT.
pub const MAX_RETRANSMIT: u32 = 4;

/// A parsed `coap://host[:port]/path?query` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoapUrl {
    /// `host:port`.
    pub authority: String,
    /// Path segments.
    pub path: Vec<String>,
    /// Query parameters, as written.
    pub query: Vec<String>,
}

impl CoapUrl {
    /// Parses a URL; only `coap://` (UDP, no DTLS).
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("coap://").ok_or_else(|| {
            format!("{url:?}: expected coap://host[:port]/path (coaps:// is not supported)")
        })?;
        let (authority, path_query) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(format!("{url:?}: no host"));
        }
        let authority = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            && !authority.ends_with(']')
        {
            authority.to_string()
        } else {
            format!("{authority}:5683")
        };
        let (path, query) = match path_query.split_once('?') {
            Some((p, q)) => (p, q),
            None => (path_query, ""),
        };
        Ok(CoapUrl {
            authority,
            path: path
                .split('/')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
            query: query
                .split('&')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
        })
    }

    /// `/a/b`.
    pub fn path_string(&self) -> String {
        format!("/{}", self.path.join("/"))
    }
}

/// A GET request for `url`.
pub fn get(url: &CoapUrl, confirmable: bool, message_id: u16, token: &[u8]) -> Packet {
    let mut p = Packet::new();
    p.header.set_type(if confirmable {
        MessageType::Confirmable
    } else {
        MessageType::NonConfirmable
    });
    p.header.code = MessageClass::Request(RequestType::Get);
    p.header.message_id = message_id;
    p.set_token(token.to_vec());
    for s in &url.path {
        p.add_option(CoapOption::UriPath, s.as_bytes().to_vec());
    }
    for q in &url.query {
        p.add_option(CoapOption::UriQuery, q.as_bytes().to_vec());
    }
    p
}

/// The Block2 or Block1 option of a packet.
pub fn block(p: &Packet, option: CoapOption) -> Option<BlockValue> {
    p.get_first_option_as::<BlockValue>(option)
        .and_then(|r| r.ok())
}

/// Sets a block option.
pub fn set_block(p: &mut Packet, option: CoapOption, num: usize, more: bool, size: usize) {
    if let Ok(v) = BlockValue::new(num, more, size) {
        p.clear_option(option);
        p.add_option_as(option, v);
    }
}

/// The response to a request: piggybacked on the ACK for a confirmable request, a
/// non-confirmable message (with `fresh_id`) otherwise.
pub fn response(request: &Packet, status: ResponseType, payload: Vec<u8>, fresh_id: u16) -> Packet {
    let mut p = Packet::new();
    if request.header.get_type() == MessageType::Confirmable {
        p.header.set_type(MessageType::Acknowledgement);
        p.header.message_id = request.header.message_id;
    } else {
        p.header.set_type(MessageType::NonConfirmable);
        p.header.message_id = fresh_id;
    }
    p.header.code = MessageClass::Response(status);
    p.set_token(request.get_token().to_vec());
    p.payload = payload;
    p
}

/// An empty ACK (or RST) for a message id.
pub fn empty(kind: MessageType, message_id: u16) -> Packet {
    let mut p = Packet::new();
    p.header.set_type(kind);
    p.header.code = MessageClass::Empty;
    p.header.message_id = message_id;
    p
}

/// The request path: `/a/b`.
pub fn path_of(p: &Packet) -> String {
    let segments: Vec<String> = p
        .get_option(CoapOption::UriPath)
        .map(|l| {
            l.iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default();
    format!("/{}", segments.join("/"))
}

/// `2.05`-style code of a response, for messages.
pub fn code(p: &Packet) -> String {
    p.header.get_code()
}

/// Whether a response code is a success (2.xx).
pub fn is_success(p: &Packet) -> bool {
    matches!(p.header.code, MessageClass::Response(r) if !r.is_error())
}

/// RFC 7641 §3.4: whether notification `new` (received now) is fresher than `old` (received
/// `age` ago).
pub fn fresher(old: u32, new: u32, age: std::time::Duration) -> bool {
    let (v1, v2) = (old & 0xFF_FFFF, new & 0xFF_FFFF);
    (v1 < v2 && v2 - v1 < 1 << 23)
        || (v1 > v2 && v1 - v2 > 1 << 23)
        || age > std::time::Duration::from_secs(128)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let u = CoapUrl::parse("coap://127.0.0.1:5684/sensors/t1?x=1").unwrap();
        assert_eq!(u.authority, "127.0.0.1:5684");
        assert_eq!(u.path, ["sensors", "t1"]);
        assert_eq!(u.query, ["x=1"]);
        assert_eq!(u.path_string(), "/sensors/t1");
        assert_eq!(
            CoapUrl::parse("coap://dev/a").unwrap().authority,
            "dev:5683"
        );
        assert!(CoapUrl::parse("coaps://dev/a")
            .unwrap_err()
            .contains("coaps"));
    }

    #[test]
    fn observe_sequence_numbers_wrap() {
        let s = std::time::Duration::from_secs(1);
        assert!(fresher(1, 2, s));
        assert!(!fresher(2, 1, s));
        assert!(fresher(0xFF_FFFF, 3, s), "wrapped");
        assert!(
            fresher(5, 1, std::time::Duration::from_secs(200)),
            "old enough"
        );
    }

    #[test]
    fn a_confirmable_request_is_answered_on_its_ack() {
        let url = CoapUrl::parse("coap://h/r").unwrap();
        let mut req = get(&url, true, 77, b"tk");
        req.header.code = MessageClass::Request(RequestType::Post);
        let resp = response(&req, ResponseType::Created, vec![], 5);
        assert_eq!(resp.header.get_type(), MessageType::Acknowledgement);
        assert_eq!(resp.header.message_id, 77);
        assert_eq!(resp.get_token(), b"tk");
        let mut b = Packet::new();
        set_block(&mut b, CoapOption::Block2, 3, true, 64);
        let v = block(&b, CoapOption::Block2).unwrap();
        assert_eq!((v.num, v.more, v.size()), (3, true, 64));
        assert_eq!(path_of(&req), "/r");
    }
}
