//! The guard every paging loop shares: a server (or driver) that hands back a token it already
//! gave in this walk, or never stops handing out tokens, ends the walk with an error instead of
//! looping forever and growing what the caller collects.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};

/// Why a walk was cut off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageLoop {
    /// The token was already handed out in this walk (an excerpt of it).
    Repeated(String),
    /// More pages than the walk's cap.
    TooManyPages(usize),
}

impl std::fmt::Display for PageLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PageLoop::Repeated(t) => write!(f, "repeated the continuation token {t:?}"),
            PageLoop::TooManyPages(n) => write!(f, "sent more than {n} pages"),
        }
    }
}

/// Tokens seen in one walk (as 64-bit hashes: a few hundred bytes of token each would be
/// memory a hostile server chooses) and the page count, against a cap.
#[derive(Debug)]
pub struct PageGuard {
    seen: HashSet<u64>,
    pages: usize,
    max_pages: usize,
}

impl PageGuard {
    pub fn new(max_pages: usize) -> PageGuard {
        PageGuard {
            seen: HashSet::new(),
            pages: 0,
            max_pages,
        }
    }

    /// Record one page and the token it ended with (empty on the last page).
    pub fn page(&mut self, next_token: &str) -> Result<(), PageLoop> {
        self.pages += 1;
        if next_token.is_empty() {
            return Ok(());
        }
        if self.pages >= self.max_pages {
            return Err(PageLoop::TooManyPages(self.max_pages));
        }
        let mut h = DefaultHasher::new();
        next_token.hash(&mut h);
        if !self.seen.insert(h.finish()) {
            return Err(PageLoop::Repeated(next_token.chars().take(64).collect()));
        }
        Ok(())
    }

    /// Back to the first page (a walk that starts over may see the same tokens again).
    pub fn restart(&mut self) {
        self.seen.clear();
        self.pages = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_and_the_cap_end_a_walk() {
        let mut g = PageGuard::new(4);
        assert_eq!(g.page("a"), Ok(()));
        assert_eq!(g.page("b"), Ok(()));
        // A cycle of two is a repeat too, not only the same token twice in a row.
        assert_eq!(g.page("a"), Err(PageLoop::Repeated("a".into())));
        g.restart();
        assert_eq!(g.page("a"), Ok(()));
        assert_eq!(g.page("b"), Ok(()));
        assert_eq!(g.page("c"), Ok(()));
        // The last page may be the cap-th; another token after it is not.
        assert_eq!(g.page("d"), Err(PageLoop::TooManyPages(4)));
        let mut g = PageGuard::new(2);
        assert_eq!(g.page("x"), Ok(()));
        assert_eq!(g.page(""), Ok(()));
        let long = "t".repeat(1000);
        let mut g = PageGuard::new(10);
        g.page(&long).unwrap();
        assert_eq!(g.page(&long), Err(PageLoop::Repeated("t".repeat(64))));
    }
}
