//! The apps of a config: a list whose copy costs its chunks, not its apps. The apps are kept in
//! chunks of about [`CHUNK`] behind `Arc`; copying the list copies the chunks' pointers, and a
//! change to the copy copies the one chunk it touches (`Arc::make_mut`). So the etcd store hands
//! each change's config over without touching the unchanged apps (at 100,000 apps a `Vec` of
//! every app, made anew per change, was most of a change's CPU), and a snapshot built on the
//! previous config finds what changed by comparing chunks by pointer ([`Apps::parts`]).

use super::App;
use std::sync::Arc;

/// The size a chunk is filled to when the list is made; a chunk that grows to twice that is
/// split in two, an empty one goes.
pub const CHUNK: usize = 128;

type Chunk = Arc<Vec<Arc<App>>>;

/// The apps, in the order of the file (or by name, from etcd).
#[derive(Clone, Default)]
pub struct Apps {
    chunks: Vec<Chunk>,
    len: usize,
}

impl Apps {
    pub fn new() -> Apps {
        Apps::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Arc<App>> + Clone + '_ {
        self.chunks.iter().flat_map(|c| c.iter())
    }

    /// The chunks: two lists that share a chunk (the same pointer) have the same apps in it.
    pub fn parts(&self) -> &[Arc<Vec<Arc<App>>>] {
        &self.chunks
    }

    /// The chunk holding index `i`, and `i`'s place in it.
    fn locate(&self, mut i: usize) -> Option<(usize, usize)> {
        for (c, chunk) in self.chunks.iter().enumerate() {
            if i < chunk.len() {
                return Some((c, i));
            }
            i -= chunk.len();
        }
        None
    }

    pub fn get(&self, i: usize) -> Option<&Arc<App>> {
        let (c, at) = self.locate(i)?;
        self.chunks[c].get(at)
    }

    pub fn push(&mut self, app: Arc<App>) {
        match self.chunks.last_mut() {
            Some(last) if last.len() < CHUNK => Arc::make_mut(last).push(app),
            _ => self.chunks.push(Arc::new(vec![app])),
        }
        self.len += 1;
    }

    /// Insert at index `i` (at most `len`), copying the one chunk it goes in.
    pub fn insert(&mut self, i: usize, app: Arc<App>) {
        if i >= self.len {
            assert!(
                i == self.len,
                "insertion index {i} past the end ({})",
                self.len
            );
            return self.push(app);
        }
        let Some((c, at)) = self.locate(i) else {
            return self.push(app);
        };
        let chunk = Arc::make_mut(&mut self.chunks[c]);
        chunk.insert(at, app);
        self.len += 1;
        if chunk.len() >= 2 * CHUNK {
            let rest = chunk.split_off(CHUNK);
            self.chunks.insert(c + 1, Arc::new(rest));
        }
    }

    /// Remove the app at index `i`, copying its chunk. Panics when `i` is out of range, as
    /// `Vec::remove` does.
    pub fn remove(&mut self, i: usize) -> Arc<App> {
        #[allow(clippy::expect_used)]
        let (c, at) = self.locate(i).expect("removal index out of range");
        let chunk = Arc::make_mut(&mut self.chunks[c]);
        let app = chunk.remove(at);
        if chunk.is_empty() {
            self.chunks.remove(c);
        }
        self.len -= 1;
        app
    }

    /// Where the app `name` is, or would go, in a list kept in name order (the etcd store's):
    /// a binary search over the chunks, then in the one chunk.
    pub fn search_by_name(&self, name: &str) -> Result<usize, usize> {
        // The first chunk whose last app is not before `name`.
        let c = self
            .chunks
            .partition_point(|c| c.last().is_some_and(|a| a.name.as_str() < name));
        let before: usize = self.chunks[..c].iter().map(|c| c.len()).sum();
        match self.chunks.get(c) {
            None => Err(before),
            Some(chunk) => match chunk.binary_search_by(|a| a.name.as_str().cmp(name)) {
                Ok(at) => Ok(before + at),
                Err(at) => Err(before + at),
            },
        }
    }

    pub fn to_vec(&self) -> Vec<Arc<App>> {
        self.iter().cloned().collect()
    }
}

impl std::ops::Index<usize> for Apps {
    type Output = Arc<App>;

    /// Panics when `i` is out of range, as a slice's does.
    fn index(&self, i: usize) -> &Arc<App> {
        #[allow(clippy::expect_used)]
        self.get(i).expect("index out of range")
    }
}

impl std::ops::IndexMut<usize> for Apps {
    /// Copies the chunk when another list shares it.
    fn index_mut(&mut self, i: usize) -> &mut Arc<App> {
        #[allow(clippy::expect_used)]
        let (c, at) = self.locate(i).expect("index out of range");
        &mut Arc::make_mut(&mut self.chunks[c])[at]
    }
}

impl FromIterator<Arc<App>> for Apps {
    fn from_iter<I: IntoIterator<Item = Arc<App>>>(iter: I) -> Apps {
        let mut apps = Apps::new();
        for app in iter {
            apps.push(app);
        }
        apps
    }
}

impl From<Vec<Arc<App>>> for Apps {
    fn from(v: Vec<Arc<App>>) -> Apps {
        v.into_iter().collect()
    }
}

impl From<Vec<App>> for Apps {
    fn from(v: Vec<App>) -> Apps {
        v.into_iter().map(Arc::new).collect()
    }
}

impl<'a> IntoIterator for &'a Apps {
    type Item = &'a Arc<App>;
    type IntoIter = Box<dyn DoubleEndedIterator<Item = &'a Arc<App>> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

impl PartialEq for Apps {
    fn eq(&self, other: &Apps) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl std::fmt::Debug for Apps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(name: &str) -> Arc<App> {
        let text = "[[apps]]\nname = \"t\"\nservices = [{ internal_port = 1, ports = [{ port = 80, handlers = [\"http\"] }] }]\n";
        #[allow(clippy::unwrap_used)]
        let mut app = crate::parse_apps(text, "t.toml", None).unwrap().remove(0);
        app.name = name.to_string();
        Arc::new(app)
    }

    #[test]
    fn a_copy_shares_every_chunk_until_one_is_changed() {
        let mut a: Apps = (0..1000).map(|i| app(&format!("a{i:04}"))).collect();
        assert_eq!(a.parts().len(), 1000_usize.div_ceil(CHUNK));
        let mut b = a.clone();
        let shared = |a: &Apps, b: &Apps| {
            a.parts()
                .iter()
                .zip(b.parts())
                .filter(|(x, y)| Arc::ptr_eq(x, y))
                .count()
        };
        b[500] = app("a0500");
        assert_eq!(shared(&a, &b), a.parts().len() - 1);
        assert_eq!(b.search_by_name("a0500"), Ok(500));
        assert_eq!(b.search_by_name("a0500x"), Err(501));
        assert_eq!(b.search_by_name("0"), Err(0));
        assert_eq!(b.search_by_name("z"), Err(1000));
        b.insert(501, app("a0500x"));
        assert_eq!(b.search_by_name("a0500x"), Ok(501));
        assert_eq!(b.remove(0).name, "a0000");
        assert_eq!(b.len(), 1000);
        assert_eq!(b.search_by_name("a0999"), Ok(999));
        // A chunk split in two, and one emptied, keep the order.
        for i in 0..(2 * CHUNK) {
            let at = b.search_by_name("a0700").unwrap_or(0);
            b.insert(at, app(&format!("a0699-{i:04}")));
        }
        let names: Vec<&str> = b.iter().map(|a| a.name.as_str()).collect();
        assert!(names.windows(2).all(|w| w[0] < w[1]), "in name order");
        assert!(b
            .parts()
            .iter()
            .all(|c| !c.is_empty() && c.len() < 2 * CHUNK));
        while !a.is_empty() {
            a.remove(0);
        }
        assert!(a.parts().is_empty());
        assert_eq!(a, Apps::new());
    }
}
