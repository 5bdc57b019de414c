//! The watch caches' stores: `Records`, a set of records that carry their own key (a `Vec`
//! of records and a table of 8-byte slots pointing into it), and `Store`, the shared,
//! snapshot-able cache one reflector writes and every loop reads.
//!
//! Why not a `HashMap<String, T>`: at a million volumes its key strings and its power-of-two
//! buckets of whole records (half empty right after a doubling) cost more than the records
//! themselves (issue #23). Here a record is stored once, densely; the table holds 8 bytes per
//! slot (32 bits of the key's hash, 32 of the index) at a load of at most one half; a lookup by
//! `namespace` and `name` hashes and compares the parts without building `namespace/name`.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::shutdown::Shutdown;

/// A record that knows its store key: `name` for cluster-scoped objects, `namespace/name` for
/// namespaced ones.
pub trait Keyed {
    fn key(&self) -> &str;
}

/// The fewest slots a non-empty table has.
const MIN_SLOTS: usize = 8;

/// The slots for `n` records: twice as many, so the load stays at most one half. Not rounded
/// to a power of two: a slot's home is found by multiplying, not masking.
fn slots_for(n: usize) -> usize {
    n.saturating_mul(2).max(MIN_SLOTS)
}

/// Records by key. Insertion order is not kept: a removal moves the last record into the
/// hole.
#[derive(Clone)]
pub struct Records<T> {
    items: Vec<T>,
    /// 0: empty; else `(hash32 << 32) | (index + 1)`. Linear probing from the hash's home
    /// (`hash32 * len >> 32`), deletion by backward shift (no tombstones), so a probe ends at
    /// the first empty slot.
    slots: Vec<u64>,
    hasher: RandomState,
}

impl<T> Default for Records<T> {
    fn default() -> Self {
        Records {
            items: Vec::new(),
            slots: Vec::new(),
            hasher: RandomState::new(),
        }
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Records<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.items).finish()
    }
}

fn slot(hash32: u32, index: usize) -> u64 {
    (u64::from(hash32) << 32) | (index as u64 + 1)
}

fn slot_index(s: u64) -> usize {
    (s & 0xffff_ffff) as usize - 1
}

fn slot_hash(s: u64) -> u32 {
    (s >> 32) as u32
}

/// Whether `key` is the concatenation of `parts`.
fn key_is(key: &str, parts: &[&str]) -> bool {
    let mut rest = key.as_bytes();
    for p in parts {
        match rest.strip_prefix(p.as_bytes()) {
            Some(r) => rest = r,
            None => return false,
        }
    }
    rest.is_empty()
}

impl<T: Keyed> Records<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Room for `n` records without growing (the list's `remainingItemCount` says how many).
    pub fn with_capacity(n: usize) -> Self {
        let mut r = Self::default();
        r.reserve(n);
        r
    }

    /// Room for `additional` more records: the vector exactly, the table to twice that.
    pub fn reserve(&mut self, additional: usize) {
        let want = self.items.len().saturating_add(additional);
        self.items.reserve_exact(additional);
        let slots = slots_for(want);
        if slots > self.slots.len() {
            self.rebuild(slots);
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Every record, in no particular order.
    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.items.iter()
    }

    /// Hash of the concatenated parts: the hasher is fed bytes only, so the parts hash as
    /// their concatenation does.
    fn hash(&self, parts: &[&str]) -> u32 {
        let mut h = self.hasher.build_hasher();
        for p in parts {
            h.write(p.as_bytes());
        }
        let full = h.finish();
        (full ^ (full >> 32)) as u32
    }

    /// Where a probe for `hash32` starts.
    fn home(&self, hash32: u32) -> usize {
        ((u64::from(hash32) * self.slots.len() as u64) >> 32) as usize
    }

    fn next(&self, pos: usize) -> usize {
        if pos + 1 == self.slots.len() {
            0
        } else {
            pos + 1
        }
    }

    /// The slot position of the record keyed by `parts`, if any.
    fn find(&self, parts: &[&str]) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let h = self.hash(parts);
        let mut pos = self.home(h);
        loop {
            let s = self.slots[pos];
            if s == 0 {
                return None;
            }
            if slot_hash(s) == h && key_is(self.items[slot_index(s)].key(), parts) {
                return Some(pos);
            }
            pos = self.next(pos);
        }
    }

    pub fn get(&self, key: &str) -> Option<&T> {
        self.get_parts(&[key])
    }

    /// The record whose key is the concatenation of `parts` (e.g. `[namespace, "/", name]`).
    pub fn get_parts(&self, parts: &[&str]) -> Option<&T> {
        self.find(parts)
            .map(|pos| &self.items[slot_index(self.slots[pos])])
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.find(&[key]).is_some()
    }

    /// Insert `rec`, replacing (and returning) the record with its key.
    pub fn insert(&mut self, rec: T) -> Option<T> {
        if let Some(pos) = self.find(&[rec.key()]) {
            let i = slot_index(self.slots[pos]);
            return Some(std::mem::replace(&mut self.items[i], rec));
        }
        if (self.items.len() + 1) * 2 > self.slots.len() {
            let slots = slots_for(self.slots.len());
            self.rebuild(slots);
        }
        let h = self.hash(&[rec.key()]);
        let index = self.items.len();
        self.items.push(rec);
        self.place(slot(h, index));
        None
    }

    /// Put `s` in the first empty slot from its home.
    fn place(&mut self, s: u64) {
        let mut pos = self.home(slot_hash(s));
        while self.slots[pos] != 0 {
            pos = self.next(pos);
        }
        self.slots[pos] = s;
    }

    /// A table of `n` slots for the current records; the stored hashes are reused, no key is
    /// hashed again.
    fn rebuild(&mut self, n: usize) {
        let old = std::mem::replace(&mut self.slots, vec![0; n]);
        for s in old.into_iter().filter(|s| *s != 0) {
            self.place(s);
        }
    }

    pub fn remove(&mut self, key: &str) -> Option<T> {
        let pos = self.find(&[key])?;
        let index = slot_index(self.slots[pos]);
        self.vacate(pos);
        let last = self.items.len() - 1;
        if index != last {
            // The last record moves into the hole: its slot must point there.
            let moved = self.hash(&[self.items[last].key()]);
            let mut p = self.home(moved);
            while slot_index(self.slots[p]) != last {
                p = self.next(p);
            }
            self.slots[p] = slot(moved, index);
        }
        Some(self.items.swap_remove(index))
    }

    /// Empty slot `pos` and shift back the run after it, so no probe stops short.
    fn vacate(&mut self, mut hole: usize) {
        self.slots[hole] = 0;
        let mut j = hole;
        loop {
            j = self.next(j);
            let s = self.slots[j];
            if s == 0 {
                return;
            }
            let home = self.home(slot_hash(s));
            // `s` may move into the hole unless its home lies cyclically in (hole, j].
            let stays = if hole <= j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !stays {
                self.slots[hole] = s;
                self.slots[j] = 0;
                hole = j;
            }
        }
    }

    /// Keep the records `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        let before = self.items.len();
        self.items.retain(|r| keep(r));
        if self.items.len() != before {
            let n = self.slots.len();
            self.slots = vec![0; n];
            for i in 0..self.items.len() {
                let h = self.hash(&[self.items[i].key()]);
                self.place(slot(h, i));
            }
        }
    }
}

impl<T: Keyed> FromIterator<T> for Records<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let iter = iter.into_iter();
        let mut r = Records::with_capacity(iter.size_hint().0);
        for rec in iter {
            r.insert(rec);
        }
        r
    }
}

impl<'a, T> IntoIterator for &'a Records<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.items.iter()
    }
}

// ---------------------------------------------------------------------------------------------
// Store

/// A change delivered to `Store::subscribe` receivers.
#[derive(Clone, Debug, PartialEq)]
pub enum Change<T> {
    Applied {
        key: String,
        old: Option<T>,
        new: T,
    },
    Deleted {
        key: String,
        old: T,
    },
    /// A relist completed; every surviving object was sent as `Applied` just before.
    Resynced,
}

struct StoreInner<T> {
    map: RwLock<Arc<Records<T>>>,
    /// Bumped on every change, so readers can skip work when nothing changed.
    generation: AtomicU64,
    /// Bumped on every removal and relist: state kept per cached object needs pruning only
    /// after one (an update never removes a key).
    removals: AtomicU64,
    synced: AtomicBool,
    /// Dropped (disconnecting `synced_rx`) at the first successful list.
    synced_tx: Mutex<Option<Sender<()>>>,
    synced_rx: Receiver<()>,
    subscribers: Mutex<Vec<Sender<Change<T>>>>,
}

/// A cache with one writer (its reflector) and cheap readers. Readers get the current records
/// as an `Arc` snapshot (O(1)); the writer copies them only when it changes them while a
/// snapshot is held (`Arc::make_mut`), so a long-lived snapshot never blocks the writer.
pub struct Store<T> {
    inner: Arc<StoreInner<T>>,
}

impl<T> Clone for Store<T> {
    fn clone(&self) -> Self {
        Store {
            inner: self.inner.clone(),
        }
    }
}

impl<T: Keyed + Clone> Default for Store<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Keyed + Clone> Store<T> {
    /// An empty, unsynced store (reflectors make their own; public for tests elsewhere).
    pub fn new() -> Store<T> {
        let (tx, rx) = crossbeam_channel::bounded(0);
        Store {
            inner: Arc::new(StoreInner {
                map: RwLock::new(Arc::new(Records::new())),
                generation: AtomicU64::new(0),
                removals: AtomicU64::new(0),
                synced: AtomicBool::new(false),
                synced_tx: Mutex::new(Some(tx)),
                synced_rx: rx,
                subscribers: Mutex::new(Vec::new()),
            }),
        }
    }

    pub fn snapshot(&self) -> Arc<Records<T>> {
        crate::sync::read(&self.inner.map).clone()
    }

    pub fn get(&self, key: &str) -> Option<T> {
        crate::sync::read(&self.inner.map).get(key).cloned()
    }

    /// The record keyed by the concatenation of `parts`, without building the key.
    pub fn get_parts(&self, parts: &[&str]) -> Option<T> {
        crate::sync::read(&self.inner.map).get_parts(parts).cloned()
    }

    /// Read `key`'s record in place, without cloning it.
    pub fn with<R>(&self, key: &str, f: impl FnOnce(Option<&T>) -> R) -> R {
        f(crate::sync::read(&self.inner.map).get(key))
    }

    /// Whether `key` is cached, without cloning its record.
    pub fn contains_key(&self, key: &str) -> bool {
        crate::sync::read(&self.inner.map).contains_key(key)
    }

    pub fn len(&self) -> usize {
        crate::sync::read(&self.inner.map).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Changes with every insert, replace or removal (a relist counts as one change).
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::SeqCst)
    }

    fn changed(&self) {
        self.inner.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Changes with every removal and relist (not with inserts and updates).
    pub fn removals(&self) -> u64 {
        self.inner.removals.load(Ordering::SeqCst)
    }

    fn removed(&self) {
        self.inner.removals.fetch_add(1, Ordering::SeqCst);
        self.changed();
    }

    /// True once the first complete list has been stored.
    pub fn is_synced(&self) -> bool {
        self.inner.synced.load(Ordering::SeqCst)
    }

    /// Block until synced (true), `timeout` passes or shutdown is triggered (false unless
    /// synced meanwhile). Woken by channel disconnection, not by polling.
    pub fn wait_synced(&self, timeout: Duration, shutdown: &Shutdown) -> bool {
        if self.is_synced() {
            return true;
        }
        let stop = shutdown.receiver();
        crossbeam_channel::select! {
            recv(self.inner.synced_rx) -> _ => {}
            recv(stop) -> _ => {}
            default(timeout) => {}
        }
        self.is_synced()
    }

    /// Changes from now on. Unbounded: a receiver that is not drained keeps growing, so drop it
    /// when done (the store then forgets it).
    pub fn subscribe(&self) -> Receiver<Change<T>> {
        let (tx, rx) = crossbeam_channel::unbounded();
        crate::sync::lock(&self.inner.subscribers).push(tx);
        rx
    }

    fn has_subscribers(&self) -> bool {
        !crate::sync::lock(&self.inner.subscribers).is_empty()
    }

    fn notify(&self, changes: Vec<Change<T>>) {
        if changes.is_empty() {
            return;
        }
        let mut subs = crate::sync::lock(&self.inner.subscribers);
        subs.retain(|tx| changes.iter().all(|c| tx.send(c.clone()).is_ok()));
    }

    fn applied(&self, old: Option<T>, rec: T) {
        self.changed();
        if self.has_subscribers() {
            self.notify(vec![Change::Applied {
                key: rec.key().to_string(),
                old,
                new: rec,
            }]);
        }
    }

    /// Insert or replace one object. Writers: the reflector (and tests that fill a store
    /// directly, as Go tests fill informer stores).
    pub fn apply(&self, rec: T) {
        let old = {
            let mut m = crate::sync::write(&self.inner.map);
            Arc::make_mut(&mut m).insert(rec.clone())
        };
        self.applied(old, rec);
    }

    /// Replace the record keyed like `rec` only when it is cached and `still` holds for it,
    /// atomically with the reflector's writes.
    pub fn replace_if(&self, rec: T, still: impl FnOnce(&T) -> bool) -> bool {
        let old = {
            let mut m = crate::sync::write(&self.inner.map);
            match m.get(rec.key()) {
                Some(current) if still(current) => {}
                _ => return false,
            }
            Arc::make_mut(&mut m).insert(rec.clone())
        };
        self.applied(old, rec);
        true
    }

    /// Insert only when absent (a GET fallback must not overwrite a newer watch update).
    pub fn insert_if_absent(&self, rec: T) -> bool {
        {
            let mut m = crate::sync::write(&self.inner.map);
            if m.contains_key(rec.key()) {
                return false;
            }
            Arc::make_mut(&mut m).insert(rec.clone());
        }
        self.applied(None, rec);
        true
    }

    pub fn remove(&self, key: &str) {
        let old = {
            let mut m = crate::sync::write(&self.inner.map);
            if !m.contains_key(key) {
                return;
            }
            Arc::make_mut(&mut m).remove(key)
        };
        self.removed();
        if let Some(old) = old {
            if self.has_subscribers() {
                self.notify(vec![Change::Deleted {
                    key: key.to_string(),
                    old,
                }]);
            }
        }
    }

    /// Swap in the result of a complete list and mark the store synced.
    pub fn replace(&self, new: Records<T>) {
        let new = Arc::new(new);
        let old = std::mem::replace(&mut *crate::sync::write(&self.inner.map), new.clone());
        self.removed();
        self.inner.synced.store(true, Ordering::SeqCst);
        crate::sync::lock(&self.inner.synced_tx).take();
        if self.has_subscribers() {
            let mut changes: Vec<Change<T>> = old
                .iter()
                .filter(|v| !new.contains_key(v.key()))
                .map(|v| Change::Deleted {
                    key: v.key().to_string(),
                    old: v.clone(),
                })
                .collect();
            changes.extend(new.iter().map(|v| Change::Applied {
                key: v.key().to_string(),
                old: old.get(v.key()).cloned(),
                new: v.clone(),
            }));
            changes.push(Change::Resynced);
            self.notify(changes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[derive(Clone, Debug, PartialEq)]
    struct Rec(String, u32);

    impl Keyed for Rec {
        fn key(&self) -> &str {
            &self.0
        }
    }

    fn rec(k: &str, v: u32) -> Rec {
        Rec(k.to_string(), v)
    }

    #[test]
    fn parts_hash_and_compare_as_their_concatenation() {
        let mut r = Records::new();
        r.insert(rec("ns/name", 1));
        assert_eq!(r.get_parts(&["ns", "/", "name"]), Some(&rec("ns/name", 1)));
        assert_eq!(r.get_parts(&["n", "s/na", "me"]), Some(&rec("ns/name", 1)));
        assert_eq!(r.get_parts(&["ns", "/", "nam"]), None);
        assert_eq!(r.get_parts(&["ns", "/", "names"]), None);
        assert_eq!(r.get("ns/name"), Some(&rec("ns/name", 1)));
    }

    /// Against a `HashMap` model, through inserts, replacements, removals and growth, with a
    /// table small enough that runs wrap around its end.
    #[test]
    fn records_behave_as_a_map() {
        let mut model: HashMap<String, u32> = HashMap::new();
        let mut r: Records<Rec> = Records::new();
        let mut x: u64 = 12345;
        for step in 0..20_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let k = format!("k{}", x % 300);
            match x % 5 {
                0 | 1 => {
                    assert_eq!(r.remove(&k).map(|v| v.1), model.remove(&k), "{step}");
                }
                _ => {
                    assert_eq!(
                        r.insert(rec(&k, step)).map(|v| v.1),
                        model.insert(k.clone(), step),
                        "{step}"
                    );
                }
            }
            assert_eq!(r.len(), model.len());
            if step % 97 == 0 {
                for (k, v) in &model {
                    assert_eq!(r.get(k).map(|x| x.1), Some(*v), "{step} {k}");
                }
                assert!(r.slots.len() >= 2 * r.len());
                assert_eq!(r.iter().count(), model.len());
            }
        }
        r.retain(|v| v.1 % 2 == 0);
        model.retain(|_, v| *v % 2 == 0);
        assert_eq!(r.len(), model.len());
        for (k, v) in &model {
            assert_eq!(r.get(k).map(|x| x.1), Some(*v));
        }
        for i in 0..300 {
            let k = format!("k{i}");
            assert_eq!(r.contains_key(&k), model.contains_key(&k));
        }
    }

    #[test]
    fn capacity_is_sized_once() {
        let mut r: Records<Rec> = Records::with_capacity(1000);
        let slots = r.slots.len();
        assert_eq!(slots, 2000, "twice the records, no rounding up");
        assert!(r.items.capacity() >= 1000);
        for i in 0..1000 {
            r.insert(rec(&format!("k{i}"), i));
        }
        assert_eq!(r.slots.len(), slots, "no growth within the reserved size");
        let empty: Records<Rec> = Records::new();
        assert!(empty.get("x").is_none());
    }

    #[test]
    fn store_generation_moves_with_every_change_and_only_then() {
        let s: Store<Rec> = Store::new();
        let g0 = s.generation();
        s.apply(rec("a", 1));
        let g1 = s.generation();
        assert_ne!(g0, g1);
        let _ = s.snapshot();
        assert_eq!(s.generation(), g1, "reads change nothing");
        s.remove("missing");
        assert_eq!(s.generation(), g1, "removing nothing is no change");
        assert_eq!(s.removals(), 0, "an insert is no removal");
        s.apply(rec("a", 2));
        assert_eq!(s.removals(), 0, "nor is an update");
        let g1 = s.generation();
        s.remove("a");
        assert_ne!(s.generation(), g1);
        assert_eq!(s.removals(), 1);
        let g2 = s.generation();
        s.replace(Records::new());
        assert_ne!(s.generation(), g2);
        assert_eq!(s.removals(), 2, "a relist may remove anything");
    }

    #[test]
    fn store_snapshots_are_isolated_and_replace_notifies() {
        let s: Store<Rec> = Store::new();
        let rx = s.subscribe();
        s.apply(rec("a", 1));
        let snap = s.snapshot();
        s.apply(rec("b", 2));
        assert_eq!(snap.len(), 1, "a snapshot does not see later writes");
        assert_eq!(s.len(), 2);
        s.replace([rec("c", 3), rec("b", 4)].into_iter().collect());
        let changes: Vec<Change<Rec>> = rx.try_iter().collect();
        assert_eq!(
            changes[0],
            Change::Applied {
                key: "a".into(),
                old: None,
                new: rec("a", 1)
            }
        );
        assert!(changes.contains(&Change::Deleted {
            key: "a".into(),
            old: rec("a", 1)
        }));
        assert!(changes.contains(&Change::Applied {
            key: "b".into(),
            old: Some(rec("b", 2)),
            new: rec("b", 4)
        }));
        assert_eq!(changes.last(), Some(&Change::Resynced));
        assert!(s.is_synced());
        assert!(
            !s.replace_if(rec("x", 1), |_| true),
            "absent: nothing replaced"
        );
        assert!(!s.replace_if(rec("c", 9), |c| c.1 == 0), "`still` fails");
        assert!(s.replace_if(rec("c", 9), |c| c.1 == 3));
        assert_eq!(s.get("c"), Some(rec("c", 9)));
        assert!(!s.insert_if_absent(rec("c", 1)));
        assert!(s.insert_if_absent(rec("d", 1)));
        assert_eq!(s.with("d", |r| r.map(|r| r.1)), Some(1));
    }

    #[test]
    fn wait_synced_wakes_on_sync_and_on_shutdown() {
        let s: Store<Rec> = Store::new();
        let sd = Shutdown::new();
        let s2 = s.clone();
        let sd2 = sd.clone();
        let t = std::thread::spawn(move || s2.wait_synced(Duration::from_secs(60), &sd2));
        s.replace(Records::new());
        assert!(t.join().unwrap());

        let unsynced: Store<Rec> = Store::new();
        let sd3 = sd.clone();
        let u2 = unsynced.clone();
        let t = std::thread::spawn(move || u2.wait_synced(Duration::from_secs(60), &sd3));
        sd.trigger();
        assert!(!t.join().unwrap());
        assert!(!Store::<Rec>::new().wait_synced(Duration::from_millis(10), &Shutdown::new()));
    }
}
