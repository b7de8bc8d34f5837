//! The names behind each frontend (service, port, kind, policies), published by the agent in
//! `<state-dir>/frontends.jsonl` so that netctl, which reads the pinned maps directly, can show
//! them, while the agent is up or down. The maps stay the source of truth: a missing or stale
//! file only costs the names.
//!
//! The file is a journal, one JSON line per change (`{"frontend": .., "name": ..}`, a null name
//! for a frontend gone), so a change costs a line, not a rewrite of every name (tens of MB at
//! 100k services). It is rewritten whole (a temporary file, then a rename) at the agent's
//! first sync and whenever it holds more than twice the lines it needs: the cost of the
//! rewrites, spread over the changes, stays in proportion to them. A line cut short (the agent
//! killed mid-write) is skipped by readers.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufRead as _, BufReader, BufWriter, Write as _},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

pub const FILE: &str = "frontends.jsonl";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrontendName {
    /// "namespace/name".
    pub service: String,
    pub port_name: String,
    pub kind: String,
    pub external_traffic_policy: String,
    pub internal_traffic_policy: String,
}

#[derive(Serialize, Deserialize)]
struct Line<'a> {
    frontend: std::borrow::Cow<'a, str>,
    name: Option<FrontendName>,
}

/// The agent's side: the journal, open for appending.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    file: Option<File>,
    /// Lines in the file, and names they leave (after replay).
    lines: usize,
    live: usize,
}

impl Journal {
    /// A journal in `dir`, not written yet: the first publication is a `rewrite`.
    pub fn new(dir: &Path) -> Journal {
        Journal {
            dir: dir.to_path_buf(),
            file: None,
            lines: 0,
            live: 0,
        }
    }

    /// Whether the file holds enough stale lines to be rewritten (or was never written).
    pub fn wants_rewrite(&self) -> bool {
        self.file.is_none() || self.lines > 2 * self.live + 1024
    }

    /// Publishes `names` whole, atomically.
    pub fn rewrite<'a>(
        &mut self,
        names: impl Iterator<Item = (String, &'a FrontendName)>,
    ) -> std::io::Result<()> {
        self.file = None;
        std::fs::create_dir_all(&self.dir)?;
        let tmp = self.dir.join(format!(".{FILE}.tmp"));
        let mut w = BufWriter::new(File::create(&tmp)?);
        let mut n = 0;
        for (fe, name) in names {
            write_line(&mut w, &fe, Some(name))?;
            n += 1;
        }
        w.into_inner().map_err(|e| e.into_error())?.sync_data()?;
        std::fs::rename(&tmp, self.dir.join(FILE))?;
        self.file = Some(
            std::fs::OpenOptions::new()
                .append(true)
                .open(self.dir.join(FILE))?,
        );
        (self.lines, self.live) = (n, n);
        Ok(())
    }

    /// Appends changes (None: the frontend is gone). `live`: how many names there are after
    /// them. Err when there is no file to append to yet, or the write failed: `rewrite` then.
    pub fn append(
        &mut self,
        changes: &[(String, Option<FrontendName>)],
        live: usize,
    ) -> std::io::Result<()> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("not written yet"))?;
        let mut buf = Vec::new();
        for (fe, name) in changes {
            write_line(&mut buf, fe, name.as_ref())?;
        }
        let flushed = file.write_all(&buf);
        if flushed.is_err() {
            // A line may be cut short: the next publication rewrites the file.
            self.file = None;
        }
        flushed?;
        self.lines += changes.len();
        self.live = live;
        Ok(())
    }
}

fn write_line(
    w: &mut impl std::io::Write,
    fe: &str,
    name: Option<&FrontendName>,
) -> std::io::Result<()> {
    let line = Line {
        frontend: fe.into(),
        name: name.cloned(),
    };
    serde_json::to_writer(&mut *w, &line).map_err(std::io::Error::other)?;
    w.write_all(b"\n")
}

/// Reads the names the agent published, if any: the journal replayed.
pub fn read(dir: &Path) -> BTreeMap<String, FrontendName> {
    let mut names = BTreeMap::new();
    let Ok(f) = File::open(dir.join(FILE)) else {
        return names;
    };
    for line in BufReader::new(f).lines() {
        let Ok(line) = line else { break };
        match serde_json::from_str::<Line<'_>>(&line) {
            Ok(Line {
                frontend,
                name: Some(n),
            }) => {
                names.insert(frontend.into_owned(), n);
            }
            Ok(Line {
                frontend,
                name: None,
            }) => {
                names.remove(frontend.as_ref());
            }
            Err(_) => {}
        }
    }
    names
}

/// Frontends the agent could not program (a full map, too many backends, a map error), with the
/// service that asked for them and why, in `<state-dir>/refused.json`: small (only what is
/// refused), rewritten whole (a temporary file, then a rename) when the refused set changes.
pub const REFUSED_FILE: &str = "refused.json";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub frontend: String,
    /// "namespace/name".
    pub service: String,
    pub why: String,
}

/// Publishes the refused frontends, atomically (an empty list removes the file).
pub fn write_refused(dir: &Path, refused: &[Refusal]) -> std::io::Result<()> {
    let path = dir.join(REFUSED_FILE);
    if refused.is_empty() {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{REFUSED_FILE}.tmp"));
    let mut w = BufWriter::new(File::create(&tmp)?);
    serde_json::to_writer_pretty(&mut w, refused).map_err(std::io::Error::other)?;
    w.into_inner().map_err(|e| e.into_error())?.sync_data()?;
    std::fs::rename(&tmp, path)
}

/// The refused frontends the agent last published (none if it published none). A file that
/// does not parse is an error: netctl says so rather than show nothing refused.
pub fn read_refused(dir: &Path) -> std::io::Result<Vec<Refusal>> {
    match std::fs::read(dir.join(REFUSED_FILE)) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            std::io::Error::other(format!("{}: {e}", dir.join(REFUSED_FILE).display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(service: &str) -> FrontendName {
        FrontendName {
            service: service.into(),
            port_name: "http".into(),
            kind: "ClusterIP".into(),
            external_traffic_policy: "Cluster".into(),
            internal_traffic_policy: "Cluster".into(),
        }
    }

    #[test]
    fn changes_are_appended_and_replayed_and_the_file_compacted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = Journal::new(dir.path());
        assert!(j.wants_rewrite());
        assert!(j.append(&[], 0).is_err(), "nothing to append to yet");
        let (a, b) = (name("default/a"), name("default/b"));
        j.rewrite([("10.96.0.1:80/TCP".to_string(), &a)].into_iter())
            .expect("rewrite");
        assert!(!j.wants_rewrite());
        j.append(
            &[
                ("10.96.0.2:80/TCP".into(), Some(b.clone())),
                ("10.96.0.1:80/TCP".into(), None),
            ],
            1,
        )
        .expect("append");
        let got = read(dir.path());
        assert_eq!(
            got,
            BTreeMap::from([("10.96.0.2:80/TCP".to_string(), b.clone())])
        );
        // A line cut short (a crash mid-write) costs that line only.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(FILE))
            .expect("open");
        f.write_all(b"{\"frontend\":\"10.96.0.3:80/TCP\",\"na")
            .expect("write");
        assert_eq!(read(dir.path()).len(), 1);
        // Churn on one name grows the file until it is worth rewriting.
        let mut j = Journal::new(dir.path());
        j.rewrite([("10.96.0.2:80/TCP".to_string(), &b)].into_iter())
            .expect("rewrite");
        for _ in 0..1100 {
            j.append(&[("10.96.0.2:80/TCP".into(), Some(b.clone()))], 1)
                .expect("append");
        }
        assert!(j.wants_rewrite());
        assert_eq!(read(dir.path()).len(), 1);
        assert!(read(&dir.path().join("missing")).is_empty());
    }

    #[test]
    fn refused_frontends_are_published_replaced_and_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read_refused(dir.path()).expect("none yet"), vec![]);
        let r = |fe: &str| Refusal {
            frontend: fe.into(),
            service: "default/big".into(),
            why: "SERVICES map full (10 of 10 entries in use, 3 needed)".into(),
        };
        write_refused(dir.path(), &[r("10.96.0.9:80/TCP"), r("10.96.0.9:81/TCP")]).expect("write");
        assert_eq!(read_refused(dir.path()).expect("read").len(), 2);
        write_refused(dir.path(), &[r("10.96.0.9:81/TCP")]).expect("replace");
        assert_eq!(
            read_refused(dir.path()).expect("read"),
            vec![r("10.96.0.9:81/TCP")]
        );
        write_refused(dir.path(), &[]).expect("clear");
        assert!(!dir.path().join(REFUSED_FILE).exists());
        write_refused(dir.path(), &[]).expect("clearing nothing is fine");
        std::fs::write(dir.path().join(REFUSED_FILE), b"{not json").expect("corrupt");
        assert!(
            read_refused(dir.path()).is_err(),
            "a corrupt file is an error"
        );
    }
}
