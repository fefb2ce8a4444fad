//! Storage for Durable Object instances: an ordered string → bytes map per
//! instance, atomic batches, alarms, and group-committed durability.
//!
//! Layout in the app's sled database: tree `do:<class>` holds every instance's
//! keys as `<u16 id length><id><key>`; tree `do_alarms:<class>` maps an
//! instance id to its alarm time (ms since the epoch, big-endian).

use std::ops::Bound;
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::commit::{GroupCommit, Ticket};
use crate::KvError;

/// One write in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Put(String, Vec<u8>),
    Delete(String),
}

/// `list()` options, as Cloudflare defines them.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    pub prefix: Option<String>,
    pub start: Option<String>,
    pub start_after: Option<String>,
    pub end: Option<String>,
    pub limit: Option<usize>,
    pub reverse: bool,
}

/// The storage every Durable Object class of one app shares.
pub trait DurableStore: Send + Sync {
    fn get(&self, class: &str, id: &str, key: &str) -> Result<Option<Vec<u8>>, KvError>;
    fn list(
        &self,
        class: &str,
        id: &str,
        opts: &ListOptions,
    ) -> Result<Vec<(String, Vec<u8>)>, KvError>;
    /// Applies the batch atomically (after deleting everything first when
    /// `delete_all`); durable once [`DurableStore::durable`] says so.
    fn write(
        &self,
        class: &str,
        id: &str,
        delete_all: bool,
        batch: &[Write],
    ) -> Result<Ticket, KvError>;
    fn durable(&self, ticket: Ticket) -> oneshot::Receiver<Result<(), String>>;
    fn get_alarm(&self, class: &str, id: &str) -> Result<Option<u64>, KvError>;
    fn set_alarm(&self, class: &str, id: &str, at_ms: Option<u64>) -> Result<Ticket, KvError>;
    /// Every alarm of the class: `(instance id, time)`.
    fn alarms(&self, class: &str) -> Result<Vec<(String, u64)>, KvError>;
    /// Deletes every instance's data and alarms of the class.
    fn drop_class(&self, class: &str) -> Result<(), KvError>;
}

/// [`DurableStore`] on sled.
pub struct SledDurableStore {
    db: sled::Db,
    commit: GroupCommit,
}

fn instance_prefix(id: &str) -> Vec<u8> {
    let len = u16::try_from(id.len()).unwrap_or(u16::MAX);
    let mut p = Vec::with_capacity(2 + id.len());
    p.extend_from_slice(&len.to_be_bytes());
    p.extend_from_slice(id.as_bytes());
    p
}

fn full_key(prefix: &[u8], key: &str) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(key.as_bytes());
    k
}

/// The smallest byte string greater than every string starting with `p`.
fn prefix_end(p: &[u8]) -> Option<Vec<u8>> {
    let mut end = p.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

impl SledDurableStore {
    pub fn new(db: sled::Db) -> Arc<Self> {
        Arc::new(SledDurableStore {
            commit: GroupCommit::new(db.clone()),
            db,
        })
    }

    fn data(&self, class: &str) -> Result<sled::Tree, KvError> {
        Ok(self.db.open_tree(format!("do:{class}"))?)
    }

    fn alarm_tree(&self, class: &str) -> Result<sled::Tree, KvError> {
        Ok(self.db.open_tree(format!("do_alarms:{class}"))?)
    }
}

impl DurableStore for SledDurableStore {
    fn get(&self, class: &str, id: &str, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let k = full_key(&instance_prefix(id), key);
        Ok(self.data(class)?.get(k)?.map(|v| v.to_vec()))
    }

    fn list(
        &self,
        class: &str,
        id: &str,
        opts: &ListOptions,
    ) -> Result<Vec<(String, Vec<u8>)>, KvError> {
        let tree = self.data(class)?;
        let base = instance_prefix(id);
        let scope = full_key(&base, opts.prefix.as_deref().unwrap_or(""));
        let mut lower = Bound::Included(scope.clone());
        if let Some(start) = &opts.start {
            let k = full_key(&base, start);
            if k > scope {
                lower = Bound::Included(k);
            }
        }
        if let Some(after) = &opts.start_after {
            let k = full_key(&base, after);
            let beats = match &lower {
                Bound::Included(l) => k >= *l,
                _ => true,
            };
            if beats {
                lower = Bound::Excluded(k);
            }
        }
        let mut upper = match prefix_end(&scope) {
            Some(e) => Bound::Excluded(e),
            None => Bound::Unbounded,
        };
        if let Some(end) = &opts.end {
            let k = full_key(&base, end);
            let tighter = match &upper {
                Bound::Excluded(u) => k < *u,
                _ => true,
            };
            if tighter {
                upper = Bound::Excluded(k);
            }
        }
        if let (Bound::Included(l) | Bound::Excluded(l), Bound::Excluded(u)) = (&lower, &upper) {
            if l >= u {
                return Ok(Vec::new());
            }
        }
        let limit = opts.limit.unwrap_or(usize::MAX);
        let range = tree.range::<Vec<u8>, _>((lower, upper));
        let decode =
            |item: sled::Result<(sled::IVec, sled::IVec)>| -> Result<(String, Vec<u8>), KvError> {
                let (k, v) = item?;
                let key = String::from_utf8_lossy(&k[base.len()..]).into_owned();
                Ok((key, v.to_vec()))
            };
        if opts.reverse {
            range.rev().take(limit).map(decode).collect()
        } else {
            range.take(limit).map(decode).collect()
        }
    }

    fn write(
        &self,
        class: &str,
        id: &str,
        delete_all: bool,
        batch: &[Write],
    ) -> Result<Ticket, KvError> {
        let tree = self.data(class)?;
        let base = instance_prefix(id);
        let mut b = sled::Batch::default();
        if delete_all {
            for k in tree.scan_prefix(&base).keys() {
                b.remove(k?);
            }
        }
        for w in batch {
            match w {
                Write::Put(k, v) => b.insert(full_key(&base, k), v.as_slice()),
                Write::Delete(k) => b.remove(full_key(&base, k)),
            }
        }
        tree.apply_batch(b)?;
        Ok(self.commit.applied())
    }

    fn durable(&self, ticket: Ticket) -> oneshot::Receiver<Result<(), String>> {
        self.commit.durable(ticket)
    }

    fn get_alarm(&self, class: &str, id: &str) -> Result<Option<u64>, KvError> {
        Ok(self
            .alarm_tree(class)?
            .get(id.as_bytes())?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok().map(u64::from_be_bytes)))
    }

    fn set_alarm(&self, class: &str, id: &str, at_ms: Option<u64>) -> Result<Ticket, KvError> {
        let tree = self.alarm_tree(class)?;
        match at_ms {
            Some(t) => tree.insert(id.as_bytes(), &t.to_be_bytes())?,
            None => tree.remove(id.as_bytes())?,
        };
        Ok(self.commit.applied())
    }

    fn alarms(&self, class: &str) -> Result<Vec<(String, u64)>, KvError> {
        let mut out = Vec::new();
        for item in self.alarm_tree(class)?.iter() {
            let (k, v) = item?;
            if let Ok(t) = <[u8; 8]>::try_from(v.as_ref()) {
                out.push((
                    String::from_utf8_lossy(&k).into_owned(),
                    u64::from_be_bytes(t),
                ));
            }
        }
        Ok(out)
    }

    fn drop_class(&self, class: &str) -> Result<(), KvError> {
        self.db.drop_tree(format!("do:{class}"))?;
        self.db.drop_tree(format!("do_alarms:{class}"))?;
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> Arc<SledDurableStore> {
        let db = sled::Config::new().temporary(true).open().expect("db");
        SledDurableStore::new(db)
    }

    fn keys(v: Vec<(String, Vec<u8>)>) -> Vec<String> {
        v.into_iter().map(|(k, _)| k).collect()
    }

    #[test]
    fn instances_are_separate_and_lists_honour_every_option() {
        let s = store();
        let puts: Vec<Write> = ["a", "b", "ba", "bb", "c", "d"]
            .iter()
            .map(|k| Write::Put(k.to_string(), k.as_bytes().to_vec()))
            .collect();
        s.write("room", "x", false, &puts).expect("write");
        s.write("room", "xy", false, &[Write::Put("zzz".into(), vec![1])])
            .expect("write");
        let all = |o: ListOptions| keys(s.list("room", "x", &o).expect("list"));
        assert_eq!(
            all(ListOptions::default()),
            ["a", "b", "ba", "bb", "c", "d"]
        );
        assert_eq!(
            all(ListOptions {
                prefix: Some("b".into()),
                ..Default::default()
            }),
            ["b", "ba", "bb"]
        );
        assert_eq!(
            all(ListOptions {
                start: Some("b".into()),
                end: Some("c".into()),
                ..Default::default()
            }),
            ["b", "ba", "bb"]
        );
        assert_eq!(
            all(ListOptions {
                start_after: Some("b".into()),
                limit: Some(2),
                ..Default::default()
            }),
            ["ba", "bb"]
        );
        assert_eq!(
            all(ListOptions {
                reverse: true,
                limit: Some(2),
                ..Default::default()
            }),
            ["d", "c"]
        );
        assert_eq!(
            keys(s.list("room", "xy", &ListOptions::default()).expect("list")),
            ["zzz"]
        );
        s.write("room", "x", true, &[Write::Put("new".into(), vec![])])
            .expect("deleteAll");
        assert_eq!(all(ListOptions::default()), ["new"]);
        assert_eq!(s.get("room", "xy", "zzz").expect("get"), Some(vec![1]));
    }

    #[tokio::test]
    async fn tickets_become_durable() {
        let s = store();
        let t = s
            .write("c", "i", false, &[Write::Put("k".into(), vec![1])])
            .expect("write");
        s.durable(t).await.expect("recv").expect("durable");
        let t2 = s.set_alarm("c", "i", Some(42)).expect("alarm");
        assert!(t2 > t);
        s.durable(t2).await.expect("recv").expect("durable");
        assert_eq!(s.alarms("c").expect("alarms"), vec![("i".to_string(), 42)]);
        s.drop_class("c").expect("drop");
        assert_eq!(s.get("c", "i", "k").expect("get"), None);
        assert!(s.alarms("c").expect("alarms").is_empty());
    }
}
