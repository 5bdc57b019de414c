//! Paging through a list: `limit` objects a page, following `continue`, each item handed to
//! the caller as it is read (`object::read_page` decodes a page; `Client::get_list_page`
//! fetches one). Its own module so that `object` stays pure decoding and imports nothing of
//! the client that uses it.

use super::client::{encode_query, Client};
use super::error::Error;
use super::object::ListMeta;
use crate::paging::PageGuard;
use serde_json::value::RawValue;

/// Walks a list page by page (`limit` objects each, following `continue`), each item handed to
/// the caller as it is read. The reflector's initial list and the Event seeding use it;
/// client-go's pager does the same job. A server that repeats a `continue` token or never
/// stops sending them ends the walk with an error (see [`MAX_LIST_PAGES`]).
pub struct Pager<'a> {
    client: &'a Client,
    path: String,
    query: Vec<(String, String)>,
    limit: String,
    token: Option<String>,
    guard: PageGuard,
}

/// The most pages one list walk follows. At the reflector's page size (500) that is five
/// million objects, over thirty times the 150,000 Pods of Kubernetes' largest supported
/// cluster; a server still sending `continue` tokens past it is looping.
pub const MAX_LIST_PAGES: usize = 10_000;

impl<'a> Pager<'a> {
    pub fn new(client: &'a Client, path: &str, query: &[(&str, &str)], limit: u32) -> Pager<'a> {
        Pager {
            client,
            path: path.to_string(),
            query: query
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            limit: limit.to_string(),
            token: None,
            guard: PageGuard::new(MAX_LIST_PAGES),
        }
    }

    /// The request path of the next page.
    pub fn next_path(&self) -> String {
        let mut pairs: Vec<(&str, &str)> = self
            .query
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        pairs.push(("limit", &self.limit));
        if let Some(t) = &self.token {
            pairs.push(("continue", t));
        }
        format!("{}?{}", self.path, encode_query(&pairs))
    }

    /// A continue token is in use: a 410 now means it expired and the list must start over.
    pub fn continuing(&self) -> bool {
        self.token.is_some()
    }

    /// Back to the first page.
    pub fn restart(&mut self) {
        self.token = None;
        self.guard.restart();
    }

    /// Fetch the next page, every item to `each`. The returned metadata's `continue_token` is
    /// empty on the last page; the pager remembers it for the next call.
    pub fn next_page(&mut self, each: &mut dyn FnMut(&RawValue)) -> Result<ListMeta, Error> {
        let path = self.next_path();
        let meta = self.client.get_list_page(&path, each)?;
        if let Err(e) = self.guard.page(&meta.continue_token) {
            // The caller's retry starts from the first page.
            self.restart();
            return Err(Error::Decode {
                what: format!("GET {path}"),
                message: format!("the API server {e}"),
            });
        }
        self.token = Some(meta.continue_token.clone()).filter(|t| !t.is_empty());
        Ok(meta)
    }

    /// Every page to the end.
    pub fn for_each(mut self, each: &mut dyn FnMut(&RawValue)) -> Result<ListMeta, Error> {
        loop {
            let meta = self.next_page(each)?;
            if meta.continue_token.is_empty() {
                return Ok(meta);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::client::tests::{client, http, Canned};

    /// Pages follow `continue` to the end; the selector stays on every page; an error page
    /// ends the walk with the API error.
    #[test]
    fn pager_walks_every_page() {
        let srv = Canned::start(vec![
            http(
                200,
                "",
                r#"{"metadata":{"continue":"c1","resourceVersion":"5"},"items":[{"n":1},{"n":2}]}"#,
            ),
            http(
                200,
                "",
                r#"{"metadata":{"resourceVersion":"6"},"items":[{"n":3}]}"#,
            ),
            http(
                403,
                "",
                r#"{"kind":"Status","code":403,"reason":"Forbidden"}"#,
            ),
        ]);
        let c = client(&srv.addr);
        let mut seen = Vec::new();
        let meta = Pager::new(&c, "/api/v1/events", &[("fieldSelector", "a=b")], 2)
            .for_each(&mut |raw| seen.push(raw.get().to_string()))
            .unwrap();
        assert_eq!(seen, [r#"{"n":1}"#, r#"{"n":2}"#, r#"{"n":3}"#]);
        assert_eq!(meta.resource_version, "6");
        let reqs = srv.requests();
        assert!(
            reqs[0].starts_with("GET /api/v1/events?fieldSelector=a%3Db&limit=2 "),
            "{}",
            reqs[0]
        );
        assert!(
            reqs[1].starts_with("GET /api/v1/events?fieldSelector=a%3Db&limit=2&continue=c1 "),
            "{}",
            reqs[1]
        );
        let e = Pager::new(&c, "/x", &[], 2)
            .for_each(&mut |_| {})
            .unwrap_err();
        assert_eq!(e.code(), Some(403));
    }

    /// A server that hands back a `continue` token it already gave (here: the first page's
    /// token again on the third page) ends the walk with an error naming it, instead of paging
    /// forever.
    #[test]
    fn a_repeated_continue_token_ends_the_walk() {
        let page = |token: &str| {
            http(
                200,
                "",
                &format!(
                    r#"{{"metadata":{{"continue":"{token}","resourceVersion":"5"}},"items":[{{"n":1}}]}}"#
                ),
            )
        };
        let srv = Canned::start(vec![page("c1"), page("c2"), page("c1"), page("c2")]);
        let c = client(&srv.addr);
        let mut n = 0;
        let e = Pager::new(&c, "/api/v1/persistentvolumes", &[], 1)
            .for_each(&mut |_| n += 1)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "GET /api/v1/persistentvolumes?limit=1&continue=c2: malformed response: the API server repeated the continuation token \"c1\""
        );
        assert!(e.is_retryable(), "{e}");
        assert_eq!((n, srv.requests().len()), (3, 3));
    }
}
