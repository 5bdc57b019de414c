//! Objects as they come off the wire, typed: the metadata every cache needs, list pages read
//! item by item straight from the response (each item as its raw JSON text, decoded by the
//! caller into a record that names only the fields it keeps), and the reading of one list page.
//!
//! Nothing here builds a `serde_json::Value` of a page or an object: a page of 500 Pods as a
//! tree is several MB of short-lived allocations, and a few reflector threads doing that at
//! once grow several glibc arenas that are never given back (issue #18).

use serde::de::{self, DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use std::cell::Cell;
use std::fmt;
use std::rc::Rc;

/// The `metadata` fields the caches use. Missing or null fields are `None`; a field of the
/// wrong type makes the whole object malformed.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    /// Only whether it is set matters; its value is never read.
    pub deletion_timestamp: Option<IgnoredAny>,
}

impl ObjectMeta {
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }

    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or("")
    }

    pub fn resource_version(&self) -> &str {
        self.resource_version.as_deref().unwrap_or("")
    }

    pub fn is_deleting(&self) -> bool {
        self.deletion_timestamp.is_some()
    }

    /// The store key: `namespace/name` for namespaced objects, `name` for cluster-scoped ones;
    /// `None` without a name.
    pub fn key(&self) -> Option<String> {
        let name = self.name.as_deref().filter(|n| !n.is_empty())?;
        match self.namespace.as_deref().filter(|n| !n.is_empty()) {
            Some(ns) => Some(format!("{ns}/{name}")),
            None => Some(name.to_string()),
        }
    }
}

/// A wire type with object metadata (the reflector reads keys and versions through it).
pub trait Object {
    fn meta(&self) -> &ObjectMeta;
}

/// Just the metadata of an object: bookmarks, and the name of a malformed object for its log
/// line.
#[derive(Debug, Default, Deserialize)]
pub struct MetaOnly {
    #[serde(default)]
    pub metadata: Option<ObjectMeta>,
}

impl Object for MetaOnly {
    fn meta(&self) -> &ObjectMeta {
        meta_or_empty(&self.metadata)
    }
}

/// `metadata`, or an empty one when the object has none (wire types keep it optional so that
/// an object without it is not malformed, just nameless).
pub fn meta_or_empty(m: &Option<ObjectMeta>) -> &ObjectMeta {
    static EMPTY: ObjectMeta = ObjectMeta {
        name: None,
        namespace: None,
        uid: None,
        resource_version: None,
        deletion_timestamp: None,
    };
    m.as_ref().unwrap_or(&EMPTY)
}

/// `namespace/name`, `name` or `(no name)` of a raw object, however malformed the rest is.
pub fn describe(raw: &RawValue) -> String {
    serde_json::from_str::<MetaOnly>(raw.get())
        .ok()
        .and_then(|m| m.meta().key())
        .unwrap_or_else(|| "(no name)".to_string())
}

/// Decode one object into `T`. A malformed object (a field of the wrong type, not an object at
/// all) is logged with `kind`, its name and `context` (who was reading it), and yields `None`:
/// one bad object never fails a list or a watch.
pub fn decode<T: DeserializeOwned>(raw: &RawValue, kind: &str, context: &str) -> Option<T> {
    match serde_json::from_str::<T>(raw.get()) {
        Ok(v) => Some(v),
        Err(e) => {
            log::warn!(
                "{context}: skipping a malformed {kind} {}: {e}",
                describe(raw)
            );
            None
        }
    }
}

/// What a list page says about the whole list.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ListMeta {
    /// The version the list was taken at (a watch starts from the last page's).
    pub resource_version: String,
    /// Where the next page starts; empty on the last page.
    pub continue_token: String,
    /// `remainingItemCount`: how many objects the later pages hold, when the server says.
    pub remaining_item_count: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListMetaWire {
    resource_version: Option<String>,
    #[serde(rename = "continue")]
    continue_token: Option<String>,
    remaining_item_count: Option<u64>,
}

/// Read one list page from `reader`, handing every element of `items` to `each` as soon as it
/// has been read; only one element is in memory at a time. A page without `items` is
/// malformed (`items: null` is an empty page). More than `max_item` bytes read without an
/// item ending (one huge item, or a page that never gets to one) fails the page: memory for
/// one element is bounded by it.
pub fn read_page<R: std::io::Read>(
    reader: R,
    max_item: usize,
    each: &mut dyn FnMut(&RawValue),
) -> Result<ListMeta, String> {
    let used = Rc::new(Cell::new(0));
    let budget = ItemBudget {
        inner: reader,
        used: used.clone(),
        max: max_item,
    };
    let mut de = serde_json::Deserializer::from_reader(budget);
    let mut counted = |raw: &RawValue| {
        used.set(0);
        each(raw)
    };
    let meta = PageSeed { each: &mut counted }
        .deserialize(&mut de)
        .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(meta)
}

/// Counts the bytes read since the last list item was handed over, and fails the read past
/// `max`.
struct ItemBudget<R> {
    inner: R,
    used: Rc<Cell<usize>>,
    max: usize,
}

impl<R: std::io::Read> std::io::Read for ItemBudget<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let used = self.used.get() + n;
        self.used.set(used);
        if used > self.max {
            return Err(std::io::Error::other(format!(
                "a list item longer than {} bytes, the most one object takes",
                self.max
            )));
        }
        Ok(n)
    }
}

struct PageSeed<'a> {
    each: &'a mut dyn FnMut(&RawValue),
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "camelCase")]
enum PageField {
    Metadata,
    Items,
    #[serde(other)]
    Other,
}

impl<'de> DeserializeSeed<'de> for PageSeed<'_> {
    type Value = ListMeta;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<ListMeta, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> de::Visitor<'de> for PageSeed<'_> {
    type Value = ListMeta;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ListMeta, A::Error> {
        let mut meta = ListMeta::default();
        let mut items = false;
        while let Some(field) = map.next_key::<PageField>()? {
            match field {
                PageField::Metadata => {
                    if let Some(m) = map.next_value::<Option<ListMetaWire>>()? {
                        meta.resource_version = m.resource_version.unwrap_or_default();
                        meta.continue_token = m.continue_token.unwrap_or_default();
                        meta.remaining_item_count = m.remaining_item_count;
                    }
                }
                PageField::Items => {
                    map.next_value_seed(ItemsSeed {
                        each: &mut *self.each,
                    })?;
                    items = true;
                }
                PageField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if !items {
            return Err(de::Error::custom("list response without items"));
        }
        Ok(meta)
    }
}

struct ItemsSeed<'a> {
    each: &'a mut dyn FnMut(&RawValue),
}

impl<'de> DeserializeSeed<'de> for ItemsSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> de::Visitor<'de> for ItemsSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of objects")
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        // Each element's text is copied once into a small buffer and handed over; the element
        // is decoded (or found malformed) by the caller, so a bad one cannot break the page.
        while let Some(raw) = seq.next_element::<Box<RawValue>>()? {
            (self.each)(&raw);
        }
        Ok(())
    }
}

/// One value, decoded as a `T` when it is one, else skipped (the untagged enum buffers the one
/// value it is given, never the whole object).
#[derive(Deserialize)]
#[serde(untagged)]
pub enum OrNot<T> {
    Is(T),
    Not(IgnoredAny),
}

/// A value of the wrong type reads as its zero value, for the fields read leniently: a Lease
/// spec (one the API server would never have stored must not wedge the election for good:
/// with no holder it is free to take, and the takeover writes a sound spec), the API server's
/// answer to an Event write (only read back for the correlator), a Status body (its
/// fallbacks apply) and an exec plugin's output (the checks name what is missing).
pub fn zero_if_malformed<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(match OrNot::<T>::deserialize(d)? {
        OrNot::Is(v) => v,
        OrNot::Not(_) => T::default(),
    })
}

/// `null` for a map or list is an empty one, as Go's decoder reads it.
pub fn null_as_empty<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(text: &str) -> (Result<ListMeta, String>, Vec<String>) {
        let mut seen = Vec::new();
        let r = read_page(text.as_bytes(), 1 << 20, &mut |raw| {
            seen.push(raw.get().to_string())
        });
        (r, seen)
    }

    /// An item over the budget fails the page (the items before it were handed over); the
    /// budget is per item, so many items of nearly the budget each are fine.
    #[test]
    fn an_item_over_the_budget_fails_the_page() {
        let item = |n: usize| format!(r#"{{"s":"{}"}}"#, "x".repeat(n));
        let text = format!(
            r#"{{"metadata":{{}},"items":[{},{},{}]}}"#,
            item(90),
            item(90),
            item(90)
        );
        let mut seen = 0;
        assert!(read_page(text.as_bytes(), 200, &mut |_| seen += 1).is_ok());
        assert_eq!(seen, 3);
        let text = format!(
            r#"{{"metadata":{{}},"items":[{},{}]}}"#,
            item(10),
            item(300)
        );
        let mut seen = 0;
        let e = read_page(text.as_bytes(), 200, &mut |_| seen += 1).unwrap_err();
        assert!(e.contains("a list item longer than 200 bytes"), "{e}");
        assert_eq!(seen, 1);
    }

    #[test]
    fn pages_are_read_item_by_item() {
        let (meta, items) = page(
            r#"{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"7","continue":"c"},
               "items":[{"metadata":{"name":"a"}}, 3, {"x":[1,{"y":null}]}]}"#,
        );
        assert_eq!(
            meta.unwrap(),
            ListMeta {
                resource_version: "7".into(),
                continue_token: "c".into(),
                remaining_item_count: None,
            }
        );
        assert_eq!(
            items,
            vec![
                r#"{"metadata":{"name":"a"}}"#,
                "3",
                r#"{"x":[1,{"y":null}]}"#
            ]
        );
        // Items before metadata, null items, no continue.
        let (meta, items) = page(r#"{"items":null,"metadata":{"resourceVersion":"9"}}"#);
        assert_eq!(meta.unwrap().resource_version, "9");
        assert!(items.is_empty());
    }

    #[test]
    fn malformed_pages_are_errors() {
        for bad in [
            r#"{"metadata":{}}"#,
            r#"{"items":{}}"#,
            r#"[]"#,
            r#"{"items":[1,2"#,
            r#"{"items":[]} trailing"#,
            r#"{"metadata":{"resourceVersion":5},"items":[]}"#,
        ] {
            assert!(page(bad).0.is_err(), "{bad}");
        }
    }

    #[test]
    fn object_meta_and_keys() {
        let m: MetaOnly = serde_json::from_str(
            r#"{"metadata":{"name":"c","namespace":"ns","uid":"u","resourceVersion":"7","deletionTimestamp":"2026-01-01T00:00:00Z","labels":{"a":"b"}}}"#,
        )
        .unwrap();
        assert_eq!(m.meta().key().as_deref(), Some("ns/c"));
        assert_eq!(m.meta().resource_version(), "7");
        assert!(m.meta().is_deleting());
        let m: MetaOnly =
            serde_json::from_str(r#"{"metadata":{"name":"n","deletionTimestamp":null}}"#).unwrap();
        assert_eq!(m.meta().key().as_deref(), Some("n"));
        assert!(!m.meta().is_deleting());
        let m: MetaOnly = serde_json::from_str(r#"{"spec":{}}"#).unwrap();
        assert_eq!(m.meta().key(), None);
    }

    #[test]
    fn malformed_objects_are_described_and_skipped() {
        let raw = |s: &str| RawValue::from_string(s.to_string()).unwrap();
        let bad = raw(r#"{"metadata":{"name":"p","namespace":"ns"},"spec":{"nodeName":3}}"#);
        assert_eq!(describe(&bad), "ns/p");
        #[derive(Deserialize, Debug)]
        #[serde(rename_all = "camelCase")]
        #[allow(dead_code)]
        struct Spec {
            node_name: Option<String>,
        }
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct Pod {
            spec: Option<Spec>,
        }
        assert!(decode::<Pod>(&bad, "Pod", "test").is_none());
        assert!(decode::<Pod>(&raw(r#"{"spec":{"nodeName":"n"}}"#), "Pod", "test").is_some());
        assert_eq!(describe(&raw("\"garbage\"")), "(no name)");
        assert_eq!(describe(&raw(r#"{"metadata":{"name":7}}"#)), "(no name)");
    }
}
