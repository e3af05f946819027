//! The control socket's messages (`[node] control_socket`): what a running node and the process
//! taking over from it (`anyedge run --upgrade`) say to each other, one message per
//! `SOCK_SEQPACKET` packet, listening sockets riding along as `SCM_RIGHTS`. This module is the
//! codec alone (no I/O), so that it can be fuzzed; `docs/operations.md` tells the exchange.
//!
//! A message is UTF-8 text: a first line `anyedge-control/1 VERB`, then one field per line.
//!
//! | verb | from | fields | descriptors |
//! |---|---|---|---|
//! | `HANDOVER` | new | | |
//! | `STATE` | old | `generation N`, `tickets HEX` (optional) | |
//! | `SOCKETS` | old | `listener ROLE KEY COUNT`, one per listening address | COUNT each, in order |
//! | `END` | old | | |
//! | `DRAIN` | new | | |
//! | `STATUS` | anyone | | |
//! | `OK` | old | `text ...` lines (optional) | |
//! | `ERROR` | old | `text ...` lines | |
//!
//! Every field is checked: a message that breaks a rule is an error, never a panic, and the
//! descriptors that came with it are closed by the caller.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;

/// The protocol version in every first line.
pub const MAGIC: &str = "anyedge-control/1";
/// The largest message either side sends or accepts.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Descriptors per message: below the kernel's `SCM_MAX_FD` (253).
pub const MAX_FDS: usize = 200;
/// Ticket key material carried in `STATE`.
pub const MAX_TICKETS: usize = 1024;
/// Characters in one `text` line.
const MAX_TEXT: usize = 1024;

/// What a listening socket is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// A client-facing app port.
    App,
    /// The admin listener.
    Admin,
    /// The worker's backhaul listener.
    Backhaul,
    /// A listener that `sk_lookup` steers app ports to, by its own loopback address.
    Steering,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::App => "app",
            Role::Admin => "admin",
            Role::Backhaul => "backhaul",
            Role::Steering => "steering",
        }
    }

    fn parse(s: &str) -> Option<Role> {
        match s {
            "app" => Some(Role::App),
            "admin" => Some(Role::Admin),
            "backhaul" => Some(Role::Backhaul),
            "steering" => Some(Role::Steering),
            _ => None,
        }
    }
}

/// The address a listener was asked for, as the config says it (not the bound one: an admin
/// address with port 0 matches the socket bound for it). `*:PORT` is every address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ListenKey {
    AnyAddress(u16),
    Addr(SocketAddr),
}

impl std::fmt::Display for ListenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenKey::AnyAddress(port) => write!(f, "*:{port}"),
            ListenKey::Addr(a) => write!(f, "{a}"),
        }
    }
}

impl std::str::FromStr for ListenKey {
    type Err = ProtocolError;

    fn from_str(s: &str) -> Result<Self, ProtocolError> {
        if let Some(port) = s.strip_prefix("*:") {
            return port
                .parse()
                .map(ListenKey::AnyAddress)
                .map_err(|_| ProtocolError::Field("listener address"));
        }
        s.parse()
            .map(ListenKey::Addr)
            .map_err(|_| ProtocolError::Field("listener address"))
    }
}

/// One listening address handed over: its role, what it was asked for, and how many sockets
/// (one per shard with `SO_REUSEPORT`) follow for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub role: Role,
    pub key: ListenKey,
    pub count: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// New to old: send me your listening sockets.
    Handover,
    /// Old to new: its process generation and TLS ticket keys (opaque bytes).
    State {
        generation: u64,
        tickets: Vec<u8>,
    },
    /// Old to new: listening sockets, with their descriptors.
    Sockets(Vec<Listener>),
    /// Old to new: every socket has been sent.
    End,
    /// New to old: I serve on them now; stop accepting and drain.
    Drain,
    /// Anyone: who are you?
    Status,
    Ok(Vec<String>),
    Error(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("message of {0} bytes is over the limit")]
    TooLong(usize),
    #[error("message is not UTF-8")]
    NotUtf8,
    #[error("not an anyedge control message (or another version)")]
    Magic,
    #[error("unknown verb")]
    Verb,
    #[error("bad or unexpected field: {0}")]
    Field(&'static str),
    #[error("{got} descriptors came with a message that announces {announced}")]
    Descriptors { announced: usize, got: usize },
}

impl Message {
    fn verb(&self) -> &'static str {
        match self {
            Message::Handover => "HANDOVER",
            Message::State { .. } => "STATE",
            Message::Sockets(_) => "SOCKETS",
            Message::End => "END",
            Message::Drain => "DRAIN",
            Message::Status => "STATUS",
            Message::Ok(_) => "OK",
            Message::Error(_) => "ERROR",
        }
    }

    /// How many descriptors ride with this message.
    pub fn descriptors(&self) -> usize {
        match self {
            Message::Sockets(ls) => ls.iter().map(|l| l.count).sum(),
            _ => 0,
        }
    }

    /// The message's bytes. Text lines are cut at their first line break and at `MAX_TEXT`
    /// characters, so what is encoded always decodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = format!("{MAGIC} {}\n", self.verb());
        match self {
            Message::State {
                generation,
                tickets,
            } => {
                let _ = writeln!(out, "generation {generation}");
                if !tickets.is_empty() {
                    out.push_str("tickets ");
                    for b in tickets {
                        let _ = write!(out, "{b:02x}");
                    }
                    out.push('\n');
                }
            }
            Message::Sockets(listeners) => {
                for l in listeners {
                    let _ = writeln!(out, "listener {} {} {}", l.role.as_str(), l.key, l.count);
                }
            }
            Message::Ok(lines) | Message::Error(lines) => {
                for line in lines {
                    let line: String = line
                        .chars()
                        .take_while(|c| *c != '\n' && *c != '\r')
                        .take(MAX_TEXT)
                        .collect();
                    let _ = writeln!(out, "text {line}");
                }
            }
            Message::Handover | Message::End | Message::Drain | Message::Status => {}
        }
        out.into_bytes()
    }

    /// Read one message that came with `fds` descriptors.
    pub fn decode(bytes: &[u8], fds: usize) -> Result<Message, ProtocolError> {
        if bytes.len() > MAX_MESSAGE {
            return Err(ProtocolError::TooLong(bytes.len()));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| ProtocolError::NotUtf8)?;
        let body = text.strip_suffix('\n').ok_or(ProtocolError::Magic)?;
        let mut lines = body.split('\n');
        let first = lines.next().unwrap_or_default();
        let verb = first
            .strip_prefix(MAGIC)
            .and_then(|v| v.strip_prefix(' '))
            .ok_or(ProtocolError::Magic)?;
        let message = match verb {
            "HANDOVER" => none(lines, Message::Handover)?,
            "END" => none(lines, Message::End)?,
            "DRAIN" => none(lines, Message::Drain)?,
            "STATUS" => none(lines, Message::Status)?,
            "STATE" => state(lines)?,
            "SOCKETS" => Message::Sockets(sockets(lines)?),
            "OK" => Message::Ok(texts(lines)?),
            "ERROR" => Message::Error(texts(lines)?),
            _ => return Err(ProtocolError::Verb),
        };
        let announced = message.descriptors();
        if announced != fds {
            return Err(ProtocolError::Descriptors {
                announced,
                got: fds,
            });
        }
        Ok(message)
    }
}

fn none<'a>(
    mut lines: impl Iterator<Item = &'a str>,
    m: Message,
) -> Result<Message, ProtocolError> {
    match lines.next() {
        None => Ok(m),
        Some(_) => Err(ProtocolError::Field("none expected")),
    }
}

fn state<'a>(lines: impl Iterator<Item = &'a str>) -> Result<Message, ProtocolError> {
    let mut generation = None;
    let mut tickets = None;
    for line in lines {
        let (name, value) = line.split_once(' ').ok_or(ProtocolError::Field("state"))?;
        match name {
            "generation" if generation.is_none() => {
                let n = value
                    .parse::<u64>()
                    .map_err(|_| ProtocolError::Field("generation"))?;
                generation = Some(n);
            }
            "tickets" if tickets.is_none() => tickets = Some(hex(value)?),
            _ => return Err(ProtocolError::Field("state")),
        }
    }
    Ok(Message::State {
        generation: generation.ok_or(ProtocolError::Field("generation"))?,
        tickets: tickets.unwrap_or_default(),
    })
}

fn hex(s: &str) -> Result<Vec<u8>, ProtocolError> {
    let bad = ProtocolError::Field("tickets");
    if s.is_empty() || s.len() & 1 == 1 || s.len() / 2 > MAX_TICKETS {
        return Err(bad);
    }
    s.as_bytes()
        .chunks(2)
        .map(|pair| {
            let digits = std::str::from_utf8(pair).map_err(|_| bad.clone())?;
            if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad.clone());
            }
            u8::from_str_radix(digits, 16).map_err(|_| bad.clone())
        })
        .collect()
}

fn sockets<'a>(lines: impl Iterator<Item = &'a str>) -> Result<Vec<Listener>, ProtocolError> {
    let mut out = Vec::new();
    let mut total = 0usize;
    for line in lines {
        let mut parts = line.split(' ');
        let (Some("listener"), Some(role), Some(key), Some(count), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(ProtocolError::Field("listener"));
        };
        let role = Role::parse(role).ok_or(ProtocolError::Field("listener role"))?;
        let key: ListenKey = key.parse()?;
        let count = count
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_FDS).contains(n))
            .ok_or(ProtocolError::Field("listener count"))?;
        total += count;
        if total > MAX_FDS {
            return Err(ProtocolError::Field("too many descriptors"));
        }
        out.push(Listener { role, key, count });
    }
    if out.is_empty() {
        return Err(ProtocolError::Field("no listener"));
    }
    Ok(out)
}

fn texts<'a>(lines: impl Iterator<Item = &'a str>) -> Result<Vec<String>, ProtocolError> {
    lines
        .map(|line| {
            let text = line
                .strip_prefix("text ")
                .ok_or(ProtocolError::Field("text"))?;
            if text.chars().count() > MAX_TEXT || text.contains('\r') {
                return Err(ProtocolError::Field("text"));
            }
            Ok(text.to_string())
        })
        .collect()
}

/// Listening sockets received from the previous process, each claimed by the part of the node
/// that asks for the same role and address; what nobody claims is closed by
/// [`Inherited::close_unclaimed`].
#[derive(Debug, Default)]
pub struct Inherited {
    sockets: std::sync::Mutex<std::collections::BTreeMap<(Role, ListenKey), Vec<OwnedFd>>>,
}

impl Inherited {
    pub fn insert(&self, role: Role, key: ListenKey, fds: Vec<OwnedFd>) {
        self.lock().entry((role, key)).or_default().extend(fds);
    }

    /// The sockets handed over for `role` at `key`, if any.
    pub fn take(&self, role: Role, key: ListenKey) -> Option<Vec<OwnedFd>> {
        self.lock().remove(&(role, key))
    }

    /// The first sockets handed over for `role` whose key `wanted` accepts, with that key.
    pub fn take_where(
        &self,
        role: Role,
        wanted: impl Fn(&ListenKey) -> bool,
    ) -> Option<(ListenKey, Vec<OwnedFd>)> {
        let mut sockets = self.lock();
        let key = *sockets.keys().find(|(r, k)| *r == role && wanted(k))?;
        sockets.remove(&key).map(|fds| (key.1, fds))
    }

    /// Close what nobody claimed (listeners the new config no longer has); what they were.
    pub fn close_unclaimed(&self) -> Vec<(Role, ListenKey)> {
        std::mem::take(&mut *self.lock()).into_keys().collect()
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<(Role, ListenKey), Vec<OwnedFd>>>
    {
        self.sockets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The fuzz target's check (`fuzz/fuzz_targets/control_message.rs`, run over its seeds by
/// `crates/anyedge/tests/fuzz_corpus.rs`): the first byte is the number of descriptors that
/// came with the rest. Decoding never panics, and what decodes encodes to bytes that decode
/// to the same message.
pub fn fuzz_check(data: &[u8]) {
    let Some((&fds, bytes)) = data.split_first() else {
        return;
    };
    if let Ok(message) = Message::decode(bytes, usize::from(fds)) {
        let again = Message::decode(&message.encode(), message.descriptors());
        assert_eq!(again.as_ref(), Ok(&message), "round trip");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(m: Message) {
        let bytes = m.encode();
        assert_eq!(Message::decode(&bytes, m.descriptors()), Ok(m));
    }

    #[test]
    fn every_message_round_trips() {
        round_trip(Message::Handover);
        round_trip(Message::End);
        round_trip(Message::Drain);
        round_trip(Message::Status);
        round_trip(Message::State {
            generation: 7,
            tickets: vec![0, 1, 0xfe, 0xff],
        });
        round_trip(Message::State {
            generation: 1,
            tickets: Vec::new(),
        });
        round_trip(Message::Sockets(vec![
            Listener {
                role: Role::App,
                key: ListenKey::AnyAddress(80),
                count: 2,
            },
            Listener {
                role: Role::Admin,
                key: ListenKey::Addr("127.0.0.1:0".parse().expect("addr")),
                count: 1,
            },
            Listener {
                role: Role::Backhaul,
                key: ListenKey::Addr("[::1]:4280".parse().expect("addr")),
                count: 2,
            },
            Listener {
                role: Role::Steering,
                key: ListenKey::Addr("127.0.0.1:39575".parse().expect("addr")),
                count: 2,
            },
        ]));
        round_trip(Message::Ok(vec!["pid 12".into(), "generation 3".into()]));
        round_trip(Message::Error(vec!["no".into()]));
    }

    #[test]
    fn bad_messages_are_errors() {
        let cases: &[(&[u8], usize)] = &[
            (b"", 0),
            (b"anyedge-control/1 HANDOVER", 0),
            (b"anyedge-control/2 HANDOVER\n", 0),
            (b"anyedge-control/1 JUMP\n", 0),
            (b"anyedge-control/1 HANDOVER\n", 1),
            (b"anyedge-control/1 DRAIN\nextra\n", 0),
            (b"anyedge-control/1 STATE\n", 0),
            (b"anyedge-control/1 STATE\ngeneration x\n", 0),
            (b"anyedge-control/1 STATE\ngeneration 1\ngeneration 2\n", 0),
            (b"anyedge-control/1 STATE\ngeneration 1\ntickets abc\n", 0),
            (b"anyedge-control/1 STATE\ngeneration 1\ntickets zz\n", 0),
            (b"anyedge-control/1 STATE\ngeneration 1\ntickets +1\n", 0),
            (b"anyedge-control/1 SOCKETS\n", 0),
            (b"anyedge-control/1 SOCKETS\nlistener app *:80 2\n", 1),
            (b"anyedge-control/1 SOCKETS\nlistener app *:80 0\n", 0),
            (b"anyedge-control/1 SOCKETS\nlistener app *:99999 1\n", 1),
            (b"anyedge-control/1 SOCKETS\nlistener web *:80 1\n", 1),
            (b"anyedge-control/1 SOCKETS\nlistener app 1.2.3.4 1\n", 1),
            (b"anyedge-control/1 SOCKETS\nlistener app *:80 1 x\n", 1),
            (b"anyedge-control/1 SOCKETS\nlistener app *:80 201\n", 201),
            (b"anyedge-control/1 OK\nnot text\n", 0),
            (b"\xff\xfe\n", 0),
        ];
        for (bytes, fds) in cases {
            assert!(
                Message::decode(bytes, *fds).is_err(),
                "{:?} with {fds}",
                String::from_utf8_lossy(bytes)
            );
        }
        assert!(matches!(
            Message::decode(&vec![b'a'; MAX_MESSAGE + 1], 0),
            Err(ProtocolError::TooLong(_))
        ));
    }

    #[test]
    fn the_descriptor_total_is_bounded() {
        let line = "listener app *:80 100\n";
        let msg = format!("{MAGIC} SOCKETS\n{line}{line}{line}");
        assert!(Message::decode(msg.as_bytes(), 300).is_err());
    }

    #[test]
    fn text_lines_are_cut_so_they_decode() {
        let m = Message::Error(vec!["two\nlines".into(), "x".repeat(5000)]);
        let decoded = Message::decode(&m.encode(), 0).expect("decodes");
        assert_eq!(
            decoded,
            Message::Error(vec!["two".into(), "x".repeat(MAX_TEXT)])
        );
    }

    #[test]
    fn fuzz_check_takes_any_bytes() {
        fuzz_check(b"");
        fuzz_check(b"\x01anyedge-control/1 SOCKETS\nlistener app *:80 1\n");
        fuzz_check(b"\x00anyedge-control/1 OK\ntext \r\n");
    }
}
