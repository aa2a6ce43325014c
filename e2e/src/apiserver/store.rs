//! Object storage with one cluster-wide, monotonically increasing revision (the etcd
//! revision of a real API server), a bounded per-resource history for watch resumption, a
//! broadcast of every change to live watches, list snapshots for `continue` tokens, an
//! owner index for garbage collection, and an optional append-only log for `--data-dir`.
//!
//! Entry points: [`Store::transact`] (every write), [`Store::list`], [`Store::watch_from`].

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    fs::{File, OpenOptions},
    io::{BufRead, BufReader, Write as _},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
};

use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::registry::ResKey;

/// What happened to an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// Created.
    Added,
    /// Updated.
    Modified,
    /// Deleted.
    Deleted,
}

impl ChangeKind {
    /// The watch event type.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One change, as watches see it.
#[derive(Debug)]
pub struct Change {
    /// Revision of the write.
    pub rev: u64,
    /// Resource.
    pub key: ResKey,
    /// Kind of change.
    pub kind: ChangeKind,
    /// The object after the change (before it, for deletes, with the delete's revision).
    pub object: Arc<Value>,
    /// The object before the change (for label-selector transitions in watches).
    pub previous: Option<Arc<Value>>,
    /// `object` serialised once, shared by every watcher that shows it as stored.
    encoded: std::sync::OnceLock<bytes::Bytes>,
}

impl Change {
    /// `object` as JSON, serialised on first use.
    pub fn encoded(&self) -> &bytes::Bytes {
        self.encoded.get_or_init(|| bytes::Bytes::from(serde_json::to_vec(&*self.object).unwrap_or_default()))
    }
}

/// What a transaction writes.
#[derive(Debug)]
pub enum Write {
    /// Store this object (create or update).
    Put(Value),
    /// Delete the object.
    Delete,
    /// Change nothing.
    Nothing,
}

/// Where a watch starts: the retained changes after its revision, a receiver of every later
/// change, and the revision at subscription.
pub type WatchStart = (Vec<Arc<Change>>, broadcast::Receiver<Arc<Change>>, u64);

/// A watch asked for history that is no longer retained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    /// Oldest revision still available.
    pub oldest: u64,
}

type ObjKey = (String, String);
type ObjectMap = BTreeMap<ObjKey, Arc<Value>>;

struct ListSnapshot {
    rev: u64,
    items: Arc<Vec<Arc<Value>>>,
}

struct Inner {
    rev: u64,
    objects: HashMap<ResKey, ObjectMap>,
    history: HashMap<ResKey, VecDeque<Arc<Change>>>,
    compacted: HashMap<ResKey, u64>,
    snapshots: HashMap<u64, ListSnapshot>,
    next_snapshot: u64,
    owners: HashMap<String, HashSet<(ResKey, ObjKey)>>,
    log: Option<File>,
}

/// The store.
pub struct Store {
    inner: Mutex<Inner>,
    changes: broadcast::Sender<Arc<Change>>,
    history_limit: usize,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

/// Errors opening the data directory.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// I/O on the log.
    #[error("data directory {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A log line that does not parse.
    #[error("data directory {path}: line {line} is not a stored change: {source}")]
    Corrupt { path: PathBuf, line: usize, source: serde_json::Error },
}

fn owner_uids(object: &Value) -> Vec<String> {
    object["metadata"]["ownerReferences"]
        .as_array()
        .map(|refs| refs.iter().filter_map(|r| r["uid"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

fn obj_key(object: &Value) -> ObjKey {
    let m = &object["metadata"];
    (m["namespace"].as_str().unwrap_or_default().to_owned(), m["name"].as_str().unwrap_or_default().to_owned())
}

impl Inner {
    fn index_owners(&mut self, key: &ResKey, ok: &ObjKey, object: Option<&Value>, add: bool) {
        let Some(object) = object else { return };
        for uid in owner_uids(object) {
            let set = self.owners.entry(uid.clone()).or_default();
            if add {
                set.insert((key.clone(), ok.clone()));
            } else {
                set.remove(&(key.clone(), ok.clone()));
                if set.is_empty() {
                    self.owners.remove(&uid);
                }
            }
        }
    }

    fn record(&mut self, change: &Arc<Change>, history_limit: usize) {
        let history = self.history.entry(change.key.clone()).or_default();
        history.push_back(change.clone());
        while history.len() > history_limit {
            if let Some(old) = history.pop_front() {
                self.compacted.insert(change.key.clone(), old.rev);
            }
        }
    }
}

impl Store {
    /// An empty store; with `data_dir`, replays and then appends to `data_dir/changes.jsonl`.
    ///
    /// # Errors
    ///
    /// The log cannot be read or written.
    pub fn open(data_dir: Option<&Path>, history_limit: usize) -> Result<Self, StoreError> {
        let (changes, _) = broadcast::channel(65_536);
        let mut inner = Inner {
            rev: 1,
            objects: HashMap::new(),
            history: HashMap::new(),
            compacted: HashMap::new(),
            snapshots: HashMap::new(),
            next_snapshot: 1,
            owners: HashMap::new(),
            log: None,
        };
        if let Some(dir) = data_dir {
            let path = dir.join("changes.jsonl");
            let io = |source| StoreError::Io { path: path.clone(), source };
            std::fs::create_dir_all(dir).map_err(io)?;
            if path.exists() {
                let file = File::open(&path).map_err(io)?;
                for (i, line) in BufReader::new(file).lines().enumerate() {
                    let line = line.map_err(io)?;
                    if line.trim().is_empty() {
                        continue;
                    }
                    let v: Value = serde_json::from_str(&line).map_err(|source| StoreError::Corrupt {
                        path: path.clone(),
                        line: i + 1,
                        source,
                    })?;
                    let rev = v["rev"].as_u64().unwrap_or(0);
                    let key: ResKey = (
                        v["key"][0].as_str().unwrap_or_default().to_owned(),
                        v["key"][1].as_str().unwrap_or_default().to_owned(),
                    );
                    let kind = match v["type"].as_str() {
                        Some("ADDED") => ChangeKind::Added,
                        Some("DELETED") => ChangeKind::Deleted,
                        _ => ChangeKind::Modified,
                    };
                    let object = Arc::new(v["object"].clone());
                    let ok = obj_key(&object);
                    let previous = match kind {
                        ChangeKind::Deleted => inner.objects.entry(key.clone()).or_default().remove(&ok),
                        _ => inner.objects.entry(key.clone()).or_default().insert(ok.clone(), object.clone()),
                    };
                    inner.index_owners(&key, &ok, previous.as_deref(), false);
                    if kind != ChangeKind::Deleted {
                        inner.index_owners(&key, &ok, Some(&object), true);
                    }
                    let change = Arc::new(Change {
                        rev,
                        key,
                        kind,
                        object,
                        previous: None,
                        encoded: std::sync::OnceLock::new(),
                    });
                    inner.record(&change, history_limit);
                    inner.rev = inner.rev.max(rev);
                }
            }
            inner.log = Some(OpenOptions::new().create(true).append(true).open(&path).map_err(io)?);
        }
        Ok(Self { inner: Mutex::new(inner), changes, history_limit })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock only means another request panicked; the data is still consistent
        // because every mutation completes before it can panic.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The current revision.
    #[must_use]
    pub fn revision(&self) -> u64 {
        self.lock().rev
    }

    /// One object.
    #[must_use]
    pub fn get(&self, key: &ResKey, namespace: &str, name: &str) -> Option<Arc<Value>> {
        self.lock().objects.get(key)?.get(&(namespace.to_owned(), name.to_owned())).cloned()
    }

    /// Every object of a resource (in one namespace, or all), sorted by namespace/name, and
    /// the revision the list is consistent at.
    #[must_use]
    pub fn list(&self, key: &ResKey, namespace: Option<&str>) -> (Vec<Arc<Value>>, u64) {
        let inner = self.lock();
        let items = inner
            .objects
            .get(key)
            .map(|m| {
                m.iter().filter(|((ns, _), _)| namespace.is_none_or(|n| n == ns)).map(|(_, v)| v.clone()).collect()
            })
            .unwrap_or_default();
        (items, inner.rev)
    }

    /// Saves a filtered list for `continue` pages; returns its token id.
    pub fn save_snapshot(&self, items: Arc<Vec<Arc<Value>>>, rev: u64) -> u64 {
        let mut inner = self.lock();
        let id = inner.next_snapshot;
        inner.next_snapshot += 1;
        inner.snapshots.insert(id, ListSnapshot { rev, items });
        // Keep the most recent snapshots only; an expired token gets 410 like a real server.
        if inner.snapshots.len() > 256 {
            let oldest = *inner.snapshots.keys().min().unwrap_or(&id);
            inner.snapshots.remove(&oldest);
        }
        id
    }

    /// A saved list, if its token is still known.
    #[must_use]
    pub fn snapshot(&self, id: u64) -> Option<(Arc<Vec<Arc<Value>>>, u64)> {
        self.lock().snapshots.get(&id).map(|s| (s.items.clone(), s.rev))
    }

    /// Objects whose `ownerReferences` name `uid`.
    #[must_use]
    pub fn dependents(&self, uid: &str) -> Vec<(ResKey, String, String)> {
        self.lock()
            .owners
            .get(uid)
            .map(|set| set.iter().map(|(k, (ns, n))| (k.clone(), ns.clone(), n.clone())).collect())
            .unwrap_or_default()
    }

    /// Runs `decide` on the current object (if any) under the store lock and applies its
    /// [`Write`]. A `Put` gets `metadata.resourceVersion` set to the new revision; a `Put`
    /// equal to the current object changes nothing and keeps its revision (as a real server
    /// does for no-op updates). Returns `decide`'s value and the object after the transaction.
    ///
    /// # Errors
    ///
    /// Whatever `decide` returns.
    pub fn transact<R, E>(
        &self,
        key: &ResKey,
        namespace: &str,
        name: &str,
        decide: impl FnOnce(Option<&Value>) -> Result<(Write, R), E>,
    ) -> Result<(R, Option<Arc<Value>>), E> {
        let mut inner = self.lock();
        let ok: ObjKey = (namespace.to_owned(), name.to_owned());
        let current = inner.objects.get(key).and_then(|m| m.get(&ok)).cloned();
        let (write, result) = decide(current.as_deref())?;
        let write = Self::unless_unchanged(write, current.as_deref());
        Ok((result, self.commit(&mut inner, key, ok, current, write)))
    }

    /// [`Store::transact`] with `decide` run outside the store lock, as a real API server's
    /// guaranteed update does: `decide` sees the current object, and its write is applied only
    /// if the object is still that one when the lock is taken; otherwise `decide` runs again on
    /// the newer object. Writes to different objects are then computed in parallel (validation
    /// and patching are most of a write's cost), not one after another under one lock.
    ///
    /// # Errors
    ///
    /// Whatever `decide` returns.
    pub fn transact_optimistic<R, E>(
        &self,
        key: &ResKey,
        namespace: &str,
        name: &str,
        mut decide: impl FnMut(Option<&Value>) -> Result<(Write, R), E>,
    ) -> Result<(R, Option<Arc<Value>>), E> {
        let ok: ObjKey = (namespace.to_owned(), name.to_owned());
        let mut current = self.lock().objects.get(key).and_then(|m| m.get(&ok)).cloned();
        loop {
            let (write, result) = decide(current.as_deref())?;
            let write = Self::unless_unchanged(write, current.as_deref());
            let mut inner = self.lock();
            let now = inner.objects.get(key).and_then(|m| m.get(&ok)).cloned();
            // The same allocation: `current` holds it, so its address cannot have been reused.
            let same = match (&now, &current) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
            if same {
                return Ok((result, self.commit(&mut inner, key, ok, current, write)));
            }
            drop(inner);
            current = now;
        }
    }

    /// A `Put` equal to `current` but for its resourceVersion is no write at all.
    fn unless_unchanged(write: Write, current: Option<&Value>) -> Write {
        if let (Write::Put(object), Some(cur)) = (&write, current) {
            let same_rv = object["metadata"]["resourceVersion"] == cur["metadata"]["resourceVersion"];
            let unchanged = if same_rv {
                object == cur
            } else {
                let mut probe = object.clone();
                probe["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"].clone();
                probe == *cur
            };
            if unchanged {
                return Write::Nothing;
            }
        }
        write
    }

    /// Applies `write` to the object at `ok`, whose stored version is `current`, under the
    /// lock: new revision, indexes, history, log, and the change sent to the watches. Returns
    /// the object after the write.
    fn commit(
        &self,
        inner: &mut Inner,
        key: &ResKey,
        ok: ObjKey,
        current: Option<Arc<Value>>,
        write: Write,
    ) -> Option<Arc<Value>> {
        let (kind, object) = match write {
            Write::Nothing => return current,
            Write::Put(mut object) => {
                let rev = inner.rev + 1;
                object["metadata"]["resourceVersion"] = json!(rev.to_string());
                let kind = if current.is_some() { ChangeKind::Modified } else { ChangeKind::Added };
                (kind, Arc::new(object))
            }
            Write::Delete => {
                let cur = current.clone()?;
                let mut object = (*cur).clone();
                object["metadata"]["resourceVersion"] = json!((inner.rev + 1).to_string());
                (ChangeKind::Deleted, Arc::new(object))
            }
        };
        inner.rev += 1;
        let rev = inner.rev;
        inner.index_owners(key, &ok, current.as_deref(), false);
        let map = inner.objects.entry(key.clone()).or_default();
        if kind == ChangeKind::Deleted {
            map.remove(&ok);
        } else {
            map.insert(ok.clone(), object.clone());
            inner.index_owners(key, &ok, Some(&object), true);
        }
        let change = Arc::new(Change {
            rev,
            key: key.clone(),
            kind,
            object: object.clone(),
            previous: current,
            encoded: std::sync::OnceLock::new(),
        });
        inner.record(&change, self.history_limit);
        if let Some(log) = inner.log.as_mut() {
            let line = json!({"rev": rev, "key": [key.0, key.1], "type": kind.as_str(), "object": *object});
            if let Err(error) = writeln!(log, "{line}") {
                tracing::error!(%error, "cannot append to the data directory log");
            }
        }
        // Sent under the lock so that watchers see changes in revision order.
        let _ = self.changes.send(change);
        (kind != ChangeKind::Deleted).then_some(object)
    }

    /// The changes of `key` after revision `since` still in history, and a receiver for every
    /// later change (of all resources; filter by key). `None` subscribes from now.
    ///
    /// # Errors
    ///
    /// [`Expired`] when `since` is older than the retained history.
    pub fn watch_from(&self, key: &ResKey, since: Option<u64>) -> Result<WatchStart, Expired> {
        let inner = self.lock();
        let receiver = self.changes.subscribe();
        let backlog = match since {
            None => Vec::new(),
            Some(since) => {
                let oldest = inner.compacted.get(key).copied().unwrap_or(0);
                if since < oldest {
                    return Err(Expired { oldest });
                }
                inner
                    .history
                    .get(key)
                    .map(|h| h.iter().filter(|c| c.rev > since).cloned().collect())
                    .unwrap_or_default()
            }
        };
        Ok((backlog, receiver, inner.rev))
    }

    /// Drops the retained history of every resource (as etcd compaction does), so that
    /// watches from any earlier revision get 410 Gone.
    pub fn compact(&self) {
        let mut inner = self.lock();
        let rev = inner.rev;
        let keys: Vec<ResKey> = inner.history.keys().cloned().collect();
        for key in keys {
            inner.history.remove(&key);
            inner.compacted.insert(key, rev);
        }
        let keys: Vec<ResKey> = inner.objects.keys().cloned().collect();
        for key in keys {
            inner.compacted.insert(key, rev);
        }
    }

    /// Number of stored objects (all resources).
    #[must_use]
    pub fn len(&self) -> usize {
        self.lock().objects.values().map(BTreeMap::len).sum()
    }

    /// Whether the store is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every stored object of every resource (for re-registering CRDs after a restart).
    #[must_use]
    pub fn all_of(&self, key: &ResKey) -> Vec<Arc<Value>> {
        self.list(key, None).0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Concurrent writes of one object, each computed outside the lock, lose none of each
    /// other's changes: a write computed from a version that another write replaced meanwhile
    /// is computed again (without the check, two writers overwrite each other's counts).
    #[test]
    fn optimistic_writes_of_one_object_lose_no_update() {
        let store = Arc::new(Store::open(None, 1_000).unwrap());
        let key: ResKey = (String::new(), "configmaps".to_owned());
        store
            .transact(&key, "ns", "counter", |_| {
                Ok::<_, ()>((Write::Put(json!({"metadata": {"name": "counter"}, "data": {"n": 0}})), ()))
            })
            .unwrap();
        let created = store.revision();
        let per_thread = 2_000;
        let writers: Vec<_> = (0..2)
            .map(|_| {
                let (store, key) = (Arc::clone(&store), key.clone());
                std::thread::spawn(move || {
                    for _ in 0..per_thread {
                        store
                            .transact_optimistic(&key, "ns", "counter", |cur| {
                                let mut next = cur.cloned().unwrap();
                                // Some work between the read and the write, as validation is.
                                let copies: Vec<Value> = (0..20).map(|_| next.clone()).collect();
                                next["data"]["n"] = json!(copies[0]["data"]["n"].as_u64().unwrap() + 1);
                                Ok::<_, ()>((Write::Put(next), ()))
                            })
                            .unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        let last = store.get(&key, "ns", "counter").unwrap();
        assert_eq!(last["data"]["n"], json!(2 * per_thread), "an update was lost");
        assert_eq!(store.revision() - created, 2 * per_thread, "one revision per write");
    }
}
