//! DNS messages as data: the queries and RFC 2136 UPDATEs `cutover dns` sends, TSIG signing
//! (RFC 8945) with the time passed in, the interpretation of answers (rcodes and TSIG errors
//! by name), and the propagation verdict over what every server answered.
//!
//! Nothing here opens a socket or reads a clock; [`super`] does the IO. hickory-proto builds
//! and parses the messages and computes the MACs; the TSIG error field of an answer is read
//! from the wire here, because hickory does not expose it and a BADKEY/BADSIG answer comes
//! unsigned (hickory's own verifier would turn it into "invalid signature" and lose the code).

use std::net::IpAddr;

use hickory_proto::dnssec::rdata::tsig::TsigAlgorithm as HickoryAlgorithm;
use hickory_proto::dnssec::tsig::TSigner;
use hickory_proto::op::{Message, MessageType, MessageVerifier, OpCode, Query, UpdateMessage};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use serde::Serialize;

use crate::runbook::{TsigAlgorithm, TsigKey};

/// The TSIG fudge: how far apart the clocks of client and server may be, in seconds.
pub const FUDGE: u16 = 300;

/// The record type that holds addresses of `addr`'s family.
pub fn address_type(addr: IpAddr) -> RecordType {
    if addr.is_ipv4() {
        RecordType::A
    } else {
        RecordType::AAAA
    }
}

/// A domain name from the runbook (already checked there).
pub fn name(s: &str) -> Result<Name, String> {
    Name::from_ascii(s).map_err(|e| format!("{s:?} is not a domain name: {e}"))
}

/// The name of an rcode or extended rcode (TSIG errors included).
pub fn rcode_name(code: u16) -> String {
    match code {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        6 => "YXDOMAIN".into(),
        7 => "YXRRSET".into(),
        8 => "NXRRSET".into(),
        9 => "NOTAUTH".into(),
        10 => "NOTZONE".into(),
        16 => "BADSIG".into(),
        17 => "BADKEY".into(),
        18 => "BADTIME".into(),
        n => format!("RCODE{n}"),
    }
}

/// A query for `name`/`rtype` with id `id`. Recursion is desired so that resolvers in
/// `check_servers` answer too; authoritative servers ignore the bit.
pub fn query(id: u16, name: &Name, rtype: RecordType) -> Result<Vec<u8>, String> {
    let mut m = Message::new();
    m.set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true);
    m.add_query(Query::query(name.clone(), rtype));
    m.to_vec().map_err(|e| e.to_string())
}

fn address_record(name: &Name, ttl: u32, addr: IpAddr) -> Record {
    match addr {
        IpAddr::V4(a) => Record::from_rdata(name.clone(), ttl, RData::A(A(a))),
        IpAddr::V6(a) => Record::from_rdata(name.clone(), ttl, RData::AAAA(AAAA(a))),
    }
}

/// An UPDATE of `zone` that replaces the address RRset of `record` with `new` at `ttl`, on
/// the prerequisite (RFC 2136 2.4.2, value dependent) that it holds exactly `expect` now.
/// A server whose RRset differs answers NXRRSET and changes nothing.
pub fn replace_update(
    id: u16,
    zone: &Name,
    record: &Name,
    expect: &[IpAddr],
    new: &[IpAddr],
    ttl: u32,
) -> Result<Message, String> {
    let rtype = match (expect.first(), new.first()) {
        (_, Some(a)) => address_type(*a),
        (Some(a), None) => address_type(*a),
        (None, None) => return Err("nothing to replace".into()),
    };
    if expect.iter().chain(new).any(|a| address_type(*a) != rtype) {
        return Err("addresses of both families in one RRset".into());
    }
    let mut m = Message::new();
    m.set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Update)
        .set_recursion_desired(false);
    let mut z = Query::new();
    z.set_name(zone.clone())
        .set_query_class(DNSClass::IN)
        .set_query_type(RecordType::SOA);
    m.add_zone(z);
    if expect.is_empty() {
        // "RRset does not exist" (2.4.3): class NONE, no rdata.
        let mut r = Record::update0(record.clone(), 0, rtype);
        r.set_dns_class(DNSClass::NONE);
        m.add_pre_requisite(r);
    }
    for a in expect {
        m.add_pre_requisite(address_record(record, 0, *a));
    }
    // Delete the RRset (2.5.2: class ANY, TTL 0, no rdata), then add the new records.
    let mut delete = Record::update0(record.clone(), 0, rtype);
    delete.set_dns_class(DNSClass::ANY);
    m.add_update(delete);
    for a in new {
        m.add_update(address_record(record, ttl, *a));
    }
    Ok(m)
}

/// An UPDATE of `zone` that changes nothing: only the prerequisite "`record` has an RRset
/// of `rtype`" (RFC 2136 2.4.1, value independent). A server that takes it answers NOERROR,
/// which proves that it accepts the TSIG key for this zone; it is how `preflight` checks the
/// key without touching the record.
pub fn prerequisite_only_update(id: u16, zone: &Name, record: &Name, rtype: RecordType) -> Message {
    let mut m = Message::new();
    m.set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Update)
        .set_recursion_desired(false);
    let mut z = Query::new();
    z.set_name(zone.clone())
        .set_query_class(DNSClass::IN)
        .set_query_type(RecordType::SOA);
    m.add_zone(z);
    let mut r = Record::update0(record.clone(), 0, rtype);
    r.set_dns_class(DNSClass::ANY);
    m.add_pre_requisite(r);
    m
}

/// A signed message ready to send, and what checks its answer's signature.
pub struct Signed {
    /// The message on the wire.
    pub bytes: Vec<u8>,
    /// The message id.
    pub id: u16,
    verifier: Option<MessageVerifier>,
}

impl std::fmt::Debug for Signed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signed")
            .field("id", &self.id)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

/// Signs `message` with `key` at `now` (seconds since the Unix epoch).
pub fn sign(mut message: Message, key: &TsigKey, now: u64) -> Result<Signed, String> {
    let algorithm = match key.algorithm {
        TsigAlgorithm::HmacSha256 => HickoryAlgorithm::HmacSha256,
        TsigAlgorithm::HmacSha512 => HickoryAlgorithm::HmacSha512,
    };
    let signer = TSigner::new(key.secret.clone(), algorithm, name(&key.name)?, FUDGE)
        .map_err(|e| format!("TSIG key {}: {e}", key.name))?;
    let now = u32::try_from(now).map_err(|_| "the clock is past 2106".to_string())?;
    let verifier = message
        .finalize(&signer, now)
        .map_err(|e| format!("cannot sign the update: {e}"))?;
    let bytes = message.to_vec().map_err(|e| e.to_string())?;
    Ok(Signed {
        bytes,
        id: message.id(),
        verifier,
    })
}

/// Why the primary did not apply an update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// The answer's rcode or TSIG error: `NOTAUTH`/`BADKEY`, `REFUSED`, `NXRRSET`, ...
    Code {
        /// The header rcode's name.
        rcode: String,
        /// The TSIG error's name, when there is one (`BADKEY`, `BADSIG`, `BADTIME`).
        tsig_error: Option<String>,
    },
    /// The answer claims success but its signature does not verify.
    Unauthenticated(String),
    /// The answer is not a DNS answer to our message.
    Malformed(String),
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::Code {
                rcode,
                tsig_error: Some(t),
            } => write!(f, "{rcode}/{t}"),
            Rejection::Code { rcode, .. } => f.write_str(rcode),
            Rejection::Unauthenticated(m) => write!(f, "the answer's TSIG does not verify: {m}"),
            Rejection::Malformed(m) => write!(f, "malformed answer: {m}"),
        }
    }
}

/// Reads the answer to a signed update: `Ok` only for NOERROR with a valid TSIG.
pub fn interpret_update(answer: &[u8], signed: &mut Signed) -> Result<(), Rejection> {
    let message = Message::from_vec(answer).map_err(|e| Rejection::Malformed(e.to_string()))?;
    if message.id() != signed.id || message.message_type() != MessageType::Response {
        return Err(Rejection::Malformed(format!(
            "id {} is not a response to {}",
            message.id(),
            signed.id
        )));
    }
    let rcode = u16::from(message.response_code());
    let tsig = tsig_error(answer).filter(|e| *e != 0);
    if rcode != 0 || tsig.is_some() {
        return Err(Rejection::Code {
            rcode: rcode_name(rcode),
            tsig_error: tsig.map(rcode_name),
        });
    }
    match signed.verifier.as_mut() {
        Some(verify) => verify(answer)
            .map(|_| ())
            .map_err(|e| Rejection::Unauthenticated(e.to_string())),
        None => Ok(()),
    }
}

/// The error field of the TSIG record that ends `message`, if it has one (read from the wire:
/// header, questions, then every record, names skipped label by label or by pointer).
pub fn tsig_error(message: &[u8]) -> Option<u16> {
    let u16_at = |i: usize| -> Option<u16> {
        Some(u16::from_be_bytes([*message.get(i)?, *message.get(i + 1)?]))
    };
    let skip_name = |mut i: usize| -> Option<usize> {
        loop {
            let len = *message.get(i)?;
            match len {
                0 => return Some(i + 1),
                l if l & 0xc0 == 0xc0 => return Some(i + 2),
                l if l & 0xc0 == 0 => i += 1 + usize::from(l),
                _ => return None,
            }
        }
    };
    let questions = u16_at(4)?;
    let records = u32::from(u16_at(6)?) + u32::from(u16_at(8)?) + u32::from(u16_at(10)?);
    let mut i = 12;
    for _ in 0..questions {
        i = skip_name(i)? + 4;
    }
    let mut found = None;
    for _ in 0..records {
        i = skip_name(i)?;
        let rtype = u16_at(i)?;
        let rdlen = usize::from(u16_at(i + 8)?);
        let rdata = i + 10;
        if rtype == u16::from(RecordType::TSIG) {
            // algorithm name, time (6), fudge (2), MAC size (2), MAC, original id (2), error
            let j = skip_name(rdata)? + 8;
            let mac = usize::from(u16_at(j)?);
            found = Some(u16_at(j + 2 + mac + 2)?);
        }
        i = rdata + rdlen;
    }
    found
}

/// What one server answered for the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Answer {
    /// The rcode's name (`NOERROR`, `NXDOMAIN`, `REFUSED`, ...).
    pub rcode: String,
    /// The addresses of the record, sorted.
    pub addresses: Vec<IpAddr>,
    /// Their TTL (the smallest, if they differ).
    pub ttl: Option<u32>,
    /// Whether the server answered authoritatively.
    pub authoritative: bool,
}

fn response(bytes: &[u8], id: u16) -> Result<Message, String> {
    let m = Message::from_vec(bytes).map_err(|e| format!("malformed answer: {e}"))?;
    if m.id() != id || m.message_type() != MessageType::Response {
        return Err(format!("answer id {} does not match query {id}", m.id()));
    }
    Ok(m)
}

/// Reads the answer to [`query`] for the address records of `name`.
pub fn parse_answer(
    bytes: &[u8],
    id: u16,
    name: &Name,
    rtype: RecordType,
) -> Result<Answer, String> {
    let m = response(bytes, id)?;
    let mut addresses = Vec::new();
    let mut ttl: Option<u32> = None;
    for r in m.answers() {
        if r.record_type() != rtype || !r.name().eq_case(name) && r.name() != name {
            continue;
        }
        let addr = match r.data() {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            _ => continue,
        };
        addresses.push(addr);
        ttl = Some(ttl.map_or(r.ttl(), |t| t.min(r.ttl())));
    }
    addresses.sort();
    Ok(Answer {
        rcode: rcode_name(u16::from(m.response_code())),
        addresses,
        ttl,
        authoritative: m.authoritative(),
    })
}

/// The SOA serial in the answer to a SOA query, if there is one.
pub fn parse_soa_serial(bytes: &[u8], id: u16) -> Result<Option<u32>, String> {
    let m = response(bytes, id)?;
    Ok(m.answers().iter().find_map(|r| match r.data() {
        RData::SOA(soa) => Some(soa.serial()),
        _ => None,
    }))
}

/// The NS names of an NS answer, with the addresses its additional section gives for them.
pub fn parse_ns(bytes: &[u8], id: u16) -> Result<Vec<(Name, Vec<IpAddr>)>, String> {
    let m = response(bytes, id)?;
    let mut out: Vec<(Name, Vec<IpAddr>)> = m
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::NS(ns) => Some((ns.0.clone(), Vec::new())),
            _ => None,
        })
        .collect();
    for r in m.additionals() {
        let addr = match r.data() {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            _ => continue,
        };
        for (ns, addrs) in &mut out {
            if ns == r.name() {
                addrs.push(addr);
            }
        }
    }
    Ok(out)
}

/// Whether serial `a` is newer than `b` (RFC 1982 serial number arithmetic).
pub fn serial_newer(a: u32, b: u32) -> bool {
    a != b && a.wrapping_sub(b) < 0x8000_0000
}

/// What one server showed in one round of propagation polling.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Observation {
    /// The server, `IP:PORT`.
    pub server: String,
    /// Its answer for the record, or why there is none (timeout, refused, ...).
    pub answer: Result<Answer, String>,
    /// Its SOA serial for the zone, or why there is none.
    pub serial: Result<Option<u32>, String>,
}

/// What propagation waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every server answers exactly these addresses (sorted).
    Addresses(Vec<IpAddr>),
    /// Every server answers with a TTL of at most this.
    TtlAtMost(u32),
}

/// A server that is not there yet, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Laggard {
    /// The server.
    pub server: String,
    /// What it answers instead.
    pub reason: String,
}

/// The servers that do not yet answer `target`, or whose SOA serial is not the newest one
/// seen (at least `min_serial`, the primary's serial right after the update). Empty: done.
pub fn laggards(
    observations: &[Observation],
    target: &Target,
    min_serial: Option<u32>,
) -> Vec<Laggard> {
    let newest = observations
        .iter()
        .filter_map(|o| o.serial.as_ref().ok().copied().flatten())
        .chain(min_serial)
        .fold(None, |best: Option<u32>, s| match best {
            Some(b) if !serial_newer(s, b) => Some(b),
            _ => Some(s),
        });
    let show = |a: &[IpAddr]| {
        if a.is_empty() {
            "no address".to_string()
        } else {
            a.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        }
    };
    let mut out = Vec::new();
    for o in observations {
        let lag = |reason: String| Laggard {
            server: o.server.clone(),
            reason,
        };
        let answer = match &o.answer {
            Err(e) => {
                out.push(lag(format!("no answer: {e}")));
                continue;
            }
            Ok(a) => a,
        };
        if answer.rcode != "NOERROR" {
            out.push(lag(format!("answers {}", answer.rcode)));
            continue;
        }
        match target {
            Target::Addresses(want) if &answer.addresses != want => {
                out.push(lag(format!(
                    "answers {} (wanted {})",
                    show(&answer.addresses),
                    show(want)
                )));
                continue;
            }
            Target::TtlAtMost(max) if answer.ttl.is_none_or(|t| t > *max) => {
                out.push(lag(format!(
                    "answers TTL {} (wanted at most {max})",
                    answer.ttl.map_or("-".into(), |t| t.to_string())
                )));
                continue;
            }
            _ => {}
        }
        match (&o.serial, newest) {
            (Err(e), _) => out.push(lag(format!("no SOA serial: {e}"))),
            (Ok(None), _) => out.push(lag("no SOA in its answer".into())),
            (Ok(Some(s)), Some(n)) if *s != n => {
                out.push(lag(format!("SOA serial {s}, newest is {n}")))
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::dnssec::rdata::{DNSSECRData, tsig};
    use std::net::Ipv4Addr;

    fn key() -> TsigKey {
        TsigKey {
            name: "cutover.".into(),
            algorithm: TsigAlgorithm::HmacSha256,
            secret: b"0123456789abcdef0123456789abcdef".to_vec(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn replace_update_has_the_prerequisite_and_the_swap() {
        let zone = name("example.test.").unwrap();
        let record = name("svc.example.test.").unwrap();
        let m = replace_update(
            7,
            &zone,
            &record,
            &[ip("127.0.0.1")],
            &[ip("127.0.0.2")],
            60,
        )
        .unwrap();
        assert_eq!(m.op_code(), OpCode::Update);
        assert_eq!(m.zones()[0].name(), &zone);
        let pre = m.prerequisites();
        assert_eq!(pre.len(), 1);
        assert_eq!((pre[0].dns_class(), pre[0].ttl()), (DNSClass::IN, 0));
        assert_eq!(pre[0].data(), &RData::A(A(Ipv4Addr::new(127, 0, 0, 1))));
        let up = m.updates();
        assert_eq!(up.len(), 2);
        assert_eq!(
            (up[0].dns_class(), up[0].record_type()),
            (DNSClass::ANY, RecordType::A)
        );
        assert_eq!((up[1].dns_class(), up[1].ttl()), (DNSClass::IN, 60));
        assert!(replace_update(7, &zone, &record, &[ip("127.0.0.1")], &[ip("::2")], 60).is_err());
        let aaaa = replace_update(7, &zone, &record, &[ip("::1")], &[ip("::2")], 60).unwrap();
        assert_eq!(aaaa.updates()[0].record_type(), RecordType::AAAA);
    }

    #[test]
    fn signing_appends_a_tsig_whose_error_reads_zero() {
        let zone = name("example.test.").unwrap();
        let record = name("svc.example.test.").unwrap();
        let m = replace_update(
            9,
            &zone,
            &record,
            &[ip("127.0.0.1")],
            &[ip("127.0.0.2")],
            60,
        )
        .unwrap();
        let signed = sign(m, &key(), 1_700_000_000).unwrap();
        assert_eq!(tsig_error(&signed.bytes), Some(0));
        let parsed = Message::from_vec(&signed.bytes).unwrap();
        assert_eq!(parsed.signature().len(), 1);
        match parsed.signature()[0].data() {
            RData::DNSSEC(DNSSECRData::TSIG(t)) => {
                assert_eq!(t.time(), 1_700_000_000);
                assert_eq!(t.mac().len(), 32);
            }
            other => panic!("not a TSIG: {other:?}"),
        }
        // An unsigned message has no TSIG; garbage has no answer either.
        assert_eq!(tsig_error(&query(1, &zone, RecordType::SOA).unwrap()), None);
        assert_eq!(tsig_error(&[0, 1, 2]), None);
    }

    /// An answer the way BIND sends a BADKEY: NOTAUTH, an unsigned TSIG carrying the error.
    fn rejected(id: u16, rcode: u16, error: u16) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(id)
            .set_message_type(MessageType::Response)
            .set_op_code(OpCode::Update)
            .set_response_code(rcode.into());
        let t = tsig::TSIG::new(
            HickoryAlgorithm::HmacSha256,
            1_700_000_000,
            FUDGE,
            Vec::new(),
            id,
            error,
            Vec::new(),
        );
        m.add_tsig(tsig::make_tsig_record(name("cutover.").unwrap(), t));
        m.to_vec().unwrap()
    }

    #[test]
    fn rejections_name_the_rcode_and_the_tsig_error() {
        let zone = name("example.test.").unwrap();
        let record = name("svc.example.test.").unwrap();
        let m = replace_update(
            11,
            &zone,
            &record,
            &[ip("127.0.0.1")],
            &[ip("127.0.0.2")],
            60,
        )
        .unwrap();
        let mut signed = sign(m, &key(), 1_700_000_000).unwrap();
        let cases = [
            (9, 17, "NOTAUTH/BADKEY"),
            (9, 16, "NOTAUTH/BADSIG"),
            (9, 18, "NOTAUTH/BADTIME"),
            (5, 0, "REFUSED"),
            (8, 0, "NXRRSET"),
            (7, 0, "YXRRSET"),
        ];
        for (rcode, error, want) in cases {
            let err = interpret_update(&rejected(11, rcode, error), &mut signed).unwrap_err();
            assert_eq!(err.to_string(), want);
        }
        // NOERROR but unsigned by the server: not authenticated.
        let err = interpret_update(&rejected(11, 0, 0), &mut signed).unwrap_err();
        assert!(matches!(err, Rejection::Unauthenticated(_)), "{err:?}");
        // Someone else's answer.
        let err = interpret_update(&rejected(12, 0, 0), &mut signed).unwrap_err();
        assert!(matches!(err, Rejection::Malformed(_)), "{err:?}");
    }

    fn seen(server: &str, addrs: &[&str], ttl: u32, serial: u32) -> Observation {
        Observation {
            server: server.into(),
            answer: Ok(Answer {
                rcode: "NOERROR".into(),
                addresses: addrs.iter().map(|a| ip(a)).collect(),
                ttl: Some(ttl),
                authoritative: true,
            }),
            serial: Ok(Some(serial)),
        }
    }

    #[test]
    fn propagation_verdicts() {
        let new = Target::Addresses(vec![ip("127.0.0.2")]);
        let all = [
            seen("a", &["127.0.0.2"], 60, 5),
            seen("b", &["127.0.0.2"], 60, 5),
        ];
        assert!(laggards(&all, &new, Some(5)).is_empty());
        let lagging = [
            seen("a", &["127.0.0.2"], 60, 5),
            seen("b", &["127.0.0.1"], 60, 4),
        ];
        let l = laggards(&lagging, &new, Some(5));
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].server, "b");
        assert_eq!(l[0].reason, "answers 127.0.0.1 (wanted 127.0.0.2)");
        // Right answer, old serial (another record changed since): still lagging.
        let stale = [
            seen("a", &["127.0.0.2"], 60, 6),
            seen("b", &["127.0.0.2"], 60, 5),
        ];
        assert_eq!(
            laggards(&stale, &new, Some(5))[0].reason,
            "SOA serial 5, newest is 6"
        );
        // Serial arithmetic wraps.
        assert!(serial_newer(1, u32::MAX));
        let wrapped = [
            seen("a", &["127.0.0.2"], 60, 1),
            seen("b", &["127.0.0.2"], 60, u32::MAX),
        ];
        assert_eq!(laggards(&wrapped, &new, None)[0].server, "b");
        let down = [Observation {
            server: "c".into(),
            answer: Err("timed out after 1s".into()),
            serial: Err("timed out after 1s".into()),
        }];
        assert_eq!(
            laggards(&down, &new, None)[0].reason,
            "no answer: timed out after 1s"
        );
        let ttl = Target::TtlAtMost(30);
        let l = laggards(
            &[
                seen("a", &["127.0.0.1"], 30, 5),
                seen("b", &["127.0.0.1"], 60, 5),
            ],
            &ttl,
            None,
        );
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].reason, "answers TTL 60 (wanted at most 30)");
    }

    #[test]
    fn answers_are_read_by_type_and_name() {
        let record = name("svc.example.test.").unwrap();
        let mut m = Message::new();
        m.set_id(3)
            .set_message_type(MessageType::Response)
            .set_authoritative(true);
        m.add_answer(address_record(&record, 60, ip("127.0.0.2")));
        m.add_answer(address_record(&record, 30, ip("127.0.0.1")));
        m.add_answer(address_record(
            &name("other.example.test.").unwrap(),
            5,
            ip("10.0.0.1"),
        ));
        let a = parse_answer(&m.to_vec().unwrap(), 3, &record, RecordType::A).unwrap();
        assert_eq!(a.addresses, vec![ip("127.0.0.1"), ip("127.0.0.2")]);
        assert_eq!(a.ttl, Some(30));
        assert!(a.authoritative);
        assert!(parse_answer(&m.to_vec().unwrap(), 4, &record, RecordType::A).is_err());
    }
}
