//! Compact records of the PVs of our driver and of the PVCs bound to them: what the monitor
//! reads of each object and nothing else, in as few bytes and allocations as stays readable
//! (issue #23; BENCHMARKS.md "Compact records" has the byte counts). Strings of one record
//! share one allocation, namespaces of claims are interned, uids and resourceVersions are
//! `Token`s (16 bytes or a number when they have the usual form), phases are an enum, the
//! driver name is not stored (every record is of our driver). Objects are decoded from their
//! wire forms here, as the reflectors and the PVC fallback GET read them.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

use serde::Deserialize;

use crate::health::{PvcCondition, PvcHealth};
use crate::kube::object::{self, Object};
use crate::kube::ObjectMeta;
use crate::store::Keyed;

// ---------------------------------------------------------------------------------------------
// Tokens and interned strings

/// An opaque API string (a uid, a resourceVersion), kept small when it has its usual form: a
/// canonical lowercase UUID as its 16 bytes, a canonical decimal as a number, anything else as
/// text. It renders back exactly as it was read.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Token {
    Uuid([u8; 16]),
    Num(u64),
    Text(Box<str>),
}

impl Default for Token {
    fn default() -> Self {
        Token::Text(Box::from(""))
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// The 16 bytes of `8-4-4-4-12` lowercase hex, else `None` (uppercase renders differently).
fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 36 || [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
        return None;
    }
    let mut out = [0u8; 16];
    let mut digits = b.iter().filter(|c| **c != b'-');
    for byte in &mut out {
        let hi = hex_value(*digits.next()?)?;
        let lo = hex_value(*digits.next()?)?;
        *byte = (hi << 4) | lo;
    }
    Some(out)
}

/// A decimal without sign or leading zeros that fits a `u64`, else `None`.
fn parse_num(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) || (b.len() > 1 && b[0] == b'0') {
        return None;
    }
    s.parse().ok()
}

impl Token {
    pub fn new(s: &str) -> Token {
        if let Some(u) = parse_uuid(s) {
            Token::Uuid(u)
        } else if let Some(n) = parse_num(s) {
            Token::Num(n)
        } else {
            Token::Text(Box::from(s))
        }
    }

    pub fn is_empty(&self) -> bool {
        matches!(self, Token::Text(t) if t.is_empty())
    }

    /// Whether this token reads `s`, without allocating.
    pub fn is(&self, s: &str) -> bool {
        match self {
            Token::Text(t) => **t == *s,
            Token::Num(n) => parse_num(s) == Some(*n),
            Token::Uuid(u) => parse_uuid(s).as_ref() == Some(u),
        }
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::Text(t) => f.write_str(t),
            Token::Num(n) => write!(f, "{n}"),
            Token::Uuid(u) => {
                for (i, b) in u.iter().enumerate() {
                    if matches!(i, 4 | 6 | 8 | 10) {
                        f.write_str("-")?;
                    }
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

/// A `Token` kept inside a record: the 16 bytes of a UUID or a number in place, any other
/// text appended to the record's string (`Packed::Text`: its length is what is left after
/// the record's other parts). 16 bytes and a tag, where a `Token` takes 24.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Packed {
    Uuid,
    Num,
    Text,
}

/// `t` split into its inline bytes, its kind, and the text to append (empty unless text).
fn pack(t: &str) -> ([u8; 16], Packed) {
    match Token::new(t) {
        Token::Uuid(u) => (u, Packed::Uuid),
        Token::Num(n) => {
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&n.to_le_bytes());
            (b, Packed::Num)
        }
        Token::Text(_) => ([0u8; 16], Packed::Text),
    }
}

fn unpack(bytes: &[u8; 16], kind: Packed, text: &str) -> Token {
    match kind {
        Packed::Uuid => Token::Uuid(*bytes),
        Packed::Num => {
            let mut n = [0u8; 8];
            n.copy_from_slice(&bytes[..8]);
            Token::Num(u64::from_le_bytes(n))
        }
        Packed::Text => Token::Text(Box::from(text)),
    }
}

/// Values that repeat across records (the namespaces of claims) are stored once.
struct Interned {
    set: HashSet<Arc<str>>,
    /// Size after the last sweep of unused entries: the next sweep is due at twice that.
    swept_at: usize,
}

/// The one shared copy of `s`. Entries nothing else holds any more are dropped as the set
/// grows, so namespaces that come and go do not pile up.
pub fn intern(s: &str) -> Arc<str> {
    static SET: OnceLock<Mutex<Interned>> = OnceLock::new();
    let mut i = crate::sync::lock(SET.get_or_init(|| {
        Mutex::new(Interned {
            set: HashSet::new(),
            swept_at: 0,
        })
    }));
    if let Some(a) = i.set.get(s) {
        return a.clone();
    }
    if i.set.len() >= (2 * i.swept_at).max(64) {
        i.set.retain(|a| Arc::strong_count(a) > 1);
        i.swept_at = i.set.len();
    }
    let a: Arc<str> = Arc::from(s);
    i.set.insert(a.clone());
    a
}

/// The length of a string part of a record, checked: object names and handles are far
/// shorter, but a record must never silently cut one.
fn len32(s: &str) -> Option<u32> {
    u32::try_from(s.len()).ok()
}

// ---------------------------------------------------------------------------------------------
// PersistentVolumes

/// `status.phase` of a PV.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PvPhase {
    Pending,
    Available,
    Bound,
    Released,
    Failed,
    /// Absent, empty or a value this sidecar does not know.
    Unknown,
}

impl PvPhase {
    pub fn parse(s: &str) -> PvPhase {
        match s {
            "Pending" => PvPhase::Pending,
            "Available" => PvPhase::Available,
            "Bound" => PvPhase::Bound,
            "Released" => PvPhase::Released,
            "Failed" => PvPhase::Failed,
            _ => PvPhase::Unknown,
        }
    }
}

/// The claim a PV points at (`spec.claimRef`), borrowed from its record.
#[derive(Clone, Debug, PartialEq)]
pub struct Claim<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: Token,
}

/// What the monitor needs of one PV of our driver: 72 bytes and two allocations (the name,
/// shared with the per-volume state keyed by it; the handle, claim name and an unusual claim
/// uid together).
#[derive(Clone, Debug, PartialEq)]
pub struct PvRecord {
    name: Arc<str>,
    /// The volume handle, the claim's name, then its uid if that is not a UUID or number.
    text: Box<str>,
    handle_len: u32,
    /// The claim's name: at most 253 bytes, as the API server validates object names.
    claim_len: u16,
    /// `None`: no claim.
    claim_namespace: Option<Arc<str>>,
    claim_uid: [u8; 16],
    /// The phase, whether `metadata.deletionTimestamp` is set, and the claim uid's kind, in
    /// one byte (the record fits 72 bytes only so).
    flags: Flags,
}

/// `PvRecord`'s small fields in one byte: bits 0-2 the phase, bit 3 deleting, bits 4-5 the
/// claim uid's `Packed` kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Flags(u8);

const PHASES: [PvPhase; 6] = [
    PvPhase::Pending,
    PvPhase::Available,
    PvPhase::Bound,
    PvPhase::Released,
    PvPhase::Failed,
    PvPhase::Unknown,
];
const KINDS: [Packed; 3] = [Packed::Uuid, Packed::Num, Packed::Text];

impl Flags {
    fn new(phase: PvPhase, deleting: bool, kind: Packed) -> Flags {
        let p = PHASES.iter().position(|x| *x == phase).unwrap_or(5) as u8;
        let k = KINDS.iter().position(|x| *x == kind).unwrap_or(2) as u8;
        Flags(p | (u8::from(deleting) << 3) | (k << 4))
    }

    fn phase(self) -> PvPhase {
        PHASES[usize::from(self.0 & 7).min(5)]
    }

    fn deleting(self) -> bool {
        self.0 & 8 != 0
    }

    fn kind(self) -> Packed {
        KINDS[usize::from((self.0 >> 4) & 3).min(2)]
    }
}

impl Keyed for PvRecord {
    fn key(&self) -> &str {
        &self.name
    }
}

/// A PersistentVolume as decoded: metadata, `spec.csi`, `spec.claimRef`, `status.phase`.
#[derive(Debug, Default, Deserialize)]
pub struct PvWire {
    #[serde(default)]
    metadata: Option<ObjectMeta>,
    #[serde(default)]
    spec: Option<PvSpecWire>,
    #[serde(default)]
    status: Option<PhaseWire>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PvSpecWire {
    csi: Option<CsiWire>,
    claim_ref: Option<ClaimRefWire>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CsiWire {
    driver: Option<String>,
    volume_handle: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct ClaimRefWire {
    namespace: Option<String>,
    name: Option<String>,
    uid: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct PhaseWire {
    phase: Option<String>,
}

impl Object for PvWire {
    fn meta(&self) -> &ObjectMeta {
        object::meta_or_empty(&self.metadata)
    }
}

impl PvRecord {
    /// A record of PV `name`; `claim` is (namespace, name, uid). `None` if a part is longer
    /// than a record holds (4 GiB).
    pub fn new(
        name: &str,
        volume_handle: &str,
        phase: PvPhase,
        claim: Option<(&str, &str, &str)>,
        deleting: bool,
    ) -> Option<PvRecord> {
        let (ns, claim_name, uid) = claim.unwrap_or_default();
        let handle_len = len32(volume_handle)?;
        let claim_len = u16::try_from(claim_name.len()).ok()?;
        let (claim_uid, kind) = pack(uid);
        let uid_text = if kind == Packed::Text { uid } else { "" };
        handle_len
            .checked_add(u32::from(claim_len))?
            .checked_add(len32(uid_text)?)?;
        Some(PvRecord {
            name: Arc::from(name),
            text: [volume_handle, claim_name, uid_text]
                .concat()
                .into_boxed_str(),
            handle_len,
            claim_len,
            claim_namespace: claim.map(|_| intern(ns)),
            claim_uid,
            flags: Flags::new(phase, deleting, kind),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name as shared: maps keyed by PV clone it without allocating.
    pub fn name_arc(&self) -> &Arc<str> {
        &self.name
    }

    pub fn volume_handle(&self) -> &str {
        &self.text[..self.handle_len as usize]
    }

    pub fn claim(&self) -> Option<Claim<'_>> {
        let namespace = self.claim_namespace.as_deref()?;
        let start = self.handle_len as usize;
        let end = start + usize::from(self.claim_len);
        Some(Claim {
            namespace,
            name: &self.text[start..end],
            uid: unpack(&self.claim_uid, self.flags.kind(), &self.text[end..]),
        })
    }

    pub fn phase(&self) -> PvPhase {
        self.flags.phase()
    }

    pub fn deleting(&self) -> bool {
        self.flags.deleting()
    }

    /// Bound (upstream checks `status.phase == Bound`) and pointing at a claim.
    pub fn is_bound(&self) -> bool {
        self.phase() == PvPhase::Bound && self.claim_namespace.is_some()
    }

    /// `None` unless this is a CSI PV of `driver` with a name and a volume handle.
    pub fn from_wire(w: PvWire, driver: &str) -> Option<PvRecord> {
        let spec = w.spec?;
        let csi = spec.csi?;
        if csi.driver.as_deref() != Some(driver) {
            return None;
        }
        let meta = w.metadata.unwrap_or_default();
        let name = meta.name.filter(|n| !n.is_empty())?;
        let volume_handle = csi.volume_handle.filter(|h| !h.is_empty())?;
        let claim = spec.claim_ref.and_then(|c| {
            let name = c.name.filter(|n| !n.is_empty())?;
            Some((
                c.namespace.unwrap_or_default(),
                name,
                c.uid.unwrap_or_default(),
            ))
        });
        let phase = w.status.and_then(|s| s.phase);
        PvRecord::new(
            &name,
            &volume_handle,
            PvPhase::parse(phase.as_deref().unwrap_or("")),
            claim
                .as_ref()
                .map(|(ns, n, uid)| (ns.as_str(), n.as_str(), uid.as_str())),
            meta.deletion_timestamp.is_some(),
        )
    }

    /// From a tree (tests only: production decodes the wire struct straight from the response);
    /// a malformed object is `None`.
    #[cfg(test)]
    pub fn from_object(obj: &serde_json::Value, driver: &str) -> Option<PvRecord> {
        PvWire::deserialize(obj)
            .ok()
            .and_then(|w| PvRecord::from_wire(w, driver))
    }

    /// This record in another phase (tests).
    #[cfg(test)]
    pub fn with_phase(mut self, phase: PvPhase) -> PvRecord {
        self.flags = Flags::new(phase, self.deleting(), self.flags.kind());
        self
    }

    /// This record marked deleting (tests).
    #[cfg(test)]
    pub fn with_deleting(mut self, deleting: bool) -> PvRecord {
        self.flags = Flags::new(self.phase(), deleting, self.flags.kind());
        self
    }
}

// ---------------------------------------------------------------------------------------------
// PersistentVolumeClaims

/// What an Event about a PVC needs (the involved object) and what ties it to its PV: 64 bytes
/// and one allocation (`namespace/name`, `spec.volumeName` and an unusual uid or
/// resourceVersion together), plus the health status when one is set. Object names are at
/// most 253 bytes (the API server's validation), so the lengths are 16-bit.
#[derive(Clone, Debug, PartialEq)]
pub struct PvcRecord {
    /// `namespace/name`, `spec.volumeName`, then the uid and the resourceVersion when either
    /// is text.
    text: Box<str>,
    namespace_len: u16,
    key_len: u16,
    volume_end: u16,
    uid_end: u16,
    uid: [u8; 16],
    resource_version: u64,
    uid_kind: Packed,
    resource_version_kind: Packed,
    /// `status.healthStatus` (Kubernetes 1.37, gate `CSIVolumeHealth`): the baseline the
    /// health modes compare against, so a restart or a new leader rewrites nothing unchanged.
    health: Option<Box<PvcHealth>>,
}

impl Keyed for PvcRecord {
    fn key(&self) -> &str {
        &self.text[..self.key_len as usize]
    }
}

/// A PersistentVolumeClaim as decoded: metadata, `spec.volumeName`, `status.healthStatus`.
#[derive(Debug, Default, Deserialize)]
pub struct PvcWire {
    #[serde(default)]
    metadata: Option<ObjectMeta>,
    #[serde(default)]
    spec: Option<PvcSpecWire>,
    #[serde(default)]
    status: Option<PvcStatusWire>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PvcSpecWire {
    volume_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PvcStatusWire {
    health_status: Option<HealthStatusWire>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HealthStatusWire {
    health_conditions: Option<Vec<HealthConditionWire>>,
    last_transition_time: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct HealthConditionWire {
    status: Option<String>,
    reason: Option<String>,
    message: Option<String>,
}

impl Object for PvcWire {
    fn meta(&self) -> &ObjectMeta {
        object::meta_or_empty(&self.metadata)
    }
}

/// `status.healthStatus` as the API serves it; `None` when absent, null or without conditions.
fn pvc_health(h: HealthStatusWire) -> Option<PvcHealth> {
    let conditions: Vec<PvcCondition> = h
        .health_conditions?
        .into_iter()
        .map(|c| PvcCondition {
            status: c.status.unwrap_or_default(),
            reason: c.reason.unwrap_or_default(),
            message: c.message.unwrap_or_default(),
        })
        .collect();
    if conditions.is_empty() {
        return None;
    }
    Some(PvcHealth {
        conditions,
        last_transition_time: h.last_transition_time.unwrap_or_default(),
    })
}

impl PvcRecord {
    /// A record of PVC `namespace/name`; `None` if a part is longer than a record holds.
    pub fn new(
        namespace: &str,
        name: &str,
        uid: &str,
        resource_version: &str,
        volume_name: &str,
        health: Option<PvcHealth>,
    ) -> Option<PvcRecord> {
        let len16 = |s: &str| u16::try_from(s.len()).ok();
        let namespace_len = len16(namespace)?;
        let key_len = namespace_len.checked_add(1)?.checked_add(len16(name)?)?;
        let volume_end = key_len.checked_add(len16(volume_name)?)?;
        let (uid_bytes, uid_kind) = pack(uid);
        let uid_text = if uid_kind == Packed::Text { uid } else { "" };
        let uid_end = volume_end.checked_add(len16(uid_text)?)?;
        // Only a number goes inline; any other resourceVersion is kept as text.
        let rv_number = match Token::new(resource_version) {
            Token::Num(n) => Some(n),
            _ => None,
        };
        let rv_text = if rv_number.is_some() {
            ""
        } else {
            resource_version
        };
        uid_end.checked_add(len16(rv_text)?)?;
        Some(PvcRecord {
            text: [namespace, "/", name, volume_name, uid_text, rv_text]
                .concat()
                .into_boxed_str(),
            namespace_len,
            key_len,
            volume_end,
            uid_end,
            uid: uid_bytes,
            resource_version: rv_number.unwrap_or(0),
            uid_kind,
            resource_version_kind: if rv_number.is_some() {
                Packed::Num
            } else {
                Packed::Text
            },
            health: health.map(Box::new),
        })
    }

    /// `None` without a name or namespace.
    pub fn from_wire(w: PvcWire) -> Option<PvcRecord> {
        let meta = w.metadata?;
        let name = meta.name.filter(|n| !n.is_empty())?;
        let namespace = meta.namespace.filter(|n| !n.is_empty())?;
        PvcRecord::new(
            &namespace,
            &name,
            meta.uid.as_deref().unwrap_or(""),
            meta.resource_version.as_deref().unwrap_or(""),
            w.spec.and_then(|s| s.volume_name).as_deref().unwrap_or(""),
            w.status.and_then(|s| s.health_status).and_then(pvc_health),
        )
    }

    /// From a tree (tests only: production decodes the wire struct straight from the response);
    /// a malformed object is `None`.
    #[cfg(test)]
    pub fn from_object(obj: &serde_json::Value) -> Option<PvcRecord> {
        PvcWire::deserialize(obj)
            .ok()
            .and_then(PvcRecord::from_wire)
    }

    pub fn namespace(&self) -> &str {
        &self.text[..self.namespace_len as usize]
    }

    pub fn name(&self) -> &str {
        &self.text[self.namespace_len as usize + 1..self.key_len as usize]
    }

    /// `namespace/name`, the store key.
    pub fn key(&self) -> &str {
        Keyed::key(self)
    }

    /// `spec.volumeName`; empty while unbound.
    pub fn volume_name(&self) -> &str {
        &self.text[self.key_len as usize..self.volume_end as usize]
    }

    pub fn uid(&self) -> Token {
        let text = &self.text[self.volume_end as usize..self.uid_end as usize];
        unpack(&self.uid, self.uid_kind, text)
    }

    pub fn resource_version(&self) -> Token {
        match self.resource_version_kind {
            Packed::Num => Token::Num(self.resource_version),
            _ => Token::Text(Box::from(&self.text[self.uid_end as usize..])),
        }
    }

    pub fn health(&self) -> Option<&PvcHealth> {
        self.health.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn tokens_render_back_exactly() {
        for s in [
            "",
            "0",
            "7",
            "18446744073709551615",
            "18446744073709551616",
            "007",
            "-1",
            "u1",
            "00000000-0000-4000-8000-000000000001",
            "0000000A-0000-4000-8000-000000000001",
            "00000000-0000-4000-8000-00000000000",
            "00000000x0000-4000-8000-000000000001",
        ] {
            let t = Token::new(s);
            assert_eq!(t.to_string(), s);
            assert!(t.is(s), "{s}");
            assert!(!t.is("other"), "{s}");
            assert_eq!(t.is_empty(), s.is_empty());
        }
        assert!(matches!(
            Token::new("00000000-0000-4000-8000-000000000001"),
            Token::Uuid(_)
        ));
        assert!(matches!(Token::new("42"), Token::Num(42)));
        assert!(matches!(Token::new("042"), Token::Text(_)));
        assert_ne!(Token::new("1"), Token::new("01"));
        assert_eq!(std::mem::size_of::<Token>(), 24);
    }

    /// Every phase, deletion mark and kind of uid or resourceVersion reads back exactly from
    /// the packed fields.
    #[test]
    fn packed_fields_read_back() {
        let uuid = "00000000-0000-4000-8000-000000000001";
        for phase in PHASES {
            for deleting in [false, true] {
                for uid in ["", "u1", "42", uuid, "0042"] {
                    let pv =
                        PvRecord::new("pv", "h", phase, Some(("ns", "c", uid)), deleting).unwrap();
                    assert_eq!((pv.phase(), pv.deleting()), (phase, deleting));
                    let c = pv.claim().unwrap();
                    assert_eq!((c.namespace, c.name), ("ns", "c"));
                    assert_eq!(c.uid.to_string(), uid);
                    assert_eq!(pv.volume_handle(), "h");
                }
            }
        }
        for (uid, rv) in [
            ("u", "7"),
            (uuid, "abc"),
            ("", ""),
            ("42", uuid),
            (uuid, "007"),
        ] {
            let pvc = PvcRecord::new("ns", "c", uid, rv, "pv", None).unwrap();
            assert_eq!(pvc.uid().to_string(), uid);
            assert_eq!(pvc.resource_version().to_string(), rv);
            assert_eq!((pvc.key(), pvc.volume_name()), ("ns/c", "pv"));
        }
        let long = "x".repeat(70_000);
        assert!(
            PvcRecord::new("ns", &long, "", "", "", None).is_none(),
            "names over 64 KiB"
        );
        assert!(PvRecord::new("pv", "h", PvPhase::Bound, Some(("ns", &long, "")), false).is_none());
    }

    #[test]
    fn record_sizes() {
        assert_eq!(std::mem::size_of::<PvRecord>(), 72);
        assert_eq!(std::mem::size_of::<PvcRecord>(), 64);
    }

    #[test]
    fn interned_strings_are_shared_and_unused_ones_go() {
        let a = intern("ns-interned-test");
        let b = intern("ns-interned-test");
        assert!(Arc::ptr_eq(&a, &b));
        let weak = Arc::downgrade(&a);
        drop((a, b));
        // Enough new entries to trigger a sweep: the unused one is gone.
        let keep: Vec<Arc<str>> = (0..500).map(|i| intern(&format!("ns-fill-{i}"))).collect();
        assert!(
            weak.upgrade().is_none(),
            "an entry nothing holds is dropped"
        );
        assert_eq!(&*intern("ns-interned-test"), "ns-interned-test");
        assert_eq!(keep.len(), 500);
    }

    fn pv(name: &str, driver: &str, phase: &str) -> Value {
        json!({
            "metadata": {"name": name, "uid": format!("uid-{name}"), "resourceVersion": "1"},
            "spec": {"csi": {"driver": driver, "volumeHandle": format!("h-{name}")},
                     "claimRef": {"namespace": "ns", "name": format!("c-{name}"), "uid": "cu"}},
            "status": {"phase": phase}
        })
    }

    #[test]
    fn pv_record_from_object() {
        let ours = PvRecord::from_object(&pv("a", "d", "Bound"), "d").unwrap();
        assert_eq!(ours.name(), "a");
        assert_eq!(ours.volume_handle(), "h-a");
        assert_eq!(ours.phase(), PvPhase::Bound);
        assert_eq!(
            ours.claim(),
            Some(Claim {
                namespace: "ns",
                name: "c-a",
                uid: Token::new("cu")
            })
        );
        assert!(!ours.deleting());
        assert!(ours.is_bound());
        let cases: Vec<(Value, Option<bool>)> = vec![
            (pv("a", "other", "Bound"), None),
            (
                json!({"metadata": {"name": "nfs"}, "spec": {"nfs": {}}}),
                None,
            ),
            (
                json!({"metadata": {"name": "x"}, "spec": {"csi": {"driver": "d"}}}),
                None,
            ),
            (json!("garbage"), None),
            (
                json!({"metadata": {"name": "x"}, "spec": {"csi": {"driver": "d", "volumeHandle": "h"}}}),
                Some(false),
            ),
            (pv("a", "d", "Available"), Some(false)),
            (pv("a", "d", "Released"), Some(false)),
        ];
        for (obj, bound) in cases {
            assert_eq!(
                PvRecord::from_object(&obj, "d").map(|r| r.is_bound()),
                bound,
                "{obj}"
            );
        }
        let mut deleting = pv("a", "d", "Bound");
        deleting["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        assert!(PvRecord::from_object(&deleting, "d").unwrap().deleting());
        let mut no_claim = pv("a", "d", "Bound");
        no_claim["spec"]["claimRef"]["name"] = json!("");
        let r = PvRecord::from_object(&no_claim, "d").unwrap();
        assert_eq!(r.claim(), None);
        assert!(!r.is_bound());
    }

    #[test]
    fn pvc_record_parts() {
        let o = json!({"metadata": {"name": "c", "namespace": "ns", "uid": "u", "resourceVersion": "7"}, "spec": {"volumeName": "pv1"}});
        let r = PvcRecord::from_object(&o).unwrap();
        assert_eq!(
            (r.key(), r.namespace(), r.name(), r.volume_name()),
            ("ns/c", "ns", "c", "pv1")
        );
        assert_eq!(r.resource_version().to_string(), "7");
        assert_eq!(r.uid().to_string(), "u");
        assert_eq!(r.health(), None);
        assert_eq!(
            PvcRecord::from_object(&json!({"metadata": {"name": "c"}})),
            None
        );
        let unbound = PvcRecord::new("ns", "c", "", "", "", None).unwrap();
        assert_eq!((unbound.name(), unbound.volume_name()), ("c", ""));
    }
}
