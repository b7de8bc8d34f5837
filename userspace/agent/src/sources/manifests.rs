//! Standalone mode: Services, EndpointSlices and Nodes read from YAML files in a folder (several
//! documents per file allowed) instead of from an API server. A file that does not parse is
//! reported (file, line, reason) and skipped as a whole; the others keep working. Each object is
//! then checked with the API server's rules (`validate`): an invalid one, or one in conflict with
//! an older object, is refused alone, logged with its file and reason.
//!
//! The source never blocks and never reads unbounded: it runs on a thread of its own (never a
//! runtime thread), reads only regular files (symlinks followed to one; FIFOs, devices, sockets
//! and directories are skipped and logged, and a file is opened non-blocking and checked again
//! once open), at most `MAX_FILE_BYTES` each. A folder that cannot be listed (missing, not a
//! folder, no permission) keeps the last good state: nothing is removed because it vanished.

use std::{
    collections::BTreeSet,
    fs,
    io::Read as _,
    os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use k8s_openapi::api::{core::v1::Node, core::v1::Service, discovery::v1::EndpointSlice};
use serde::Deserialize as _;

use super::{Publisher, Snapshot};
use crate::{
    metrics::{Metrics, ReasonLabel},
    validate::{self, Origin, Reason, Refusal, Rules},
};

/// The largest manifest file read (4 MiB): a bigger one is refused, not read.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// How often the folder is looked at.
const POLL: Duration = Duration::from_millis(500);

#[derive(Clone, Debug, Default)]
pub struct Manifests {
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
    pub nodes: Vec<Node>,
    /// The 1-based document of each service and slice in its file (from `parse_file`).
    pub service_docs: Vec<usize>,
    pub slice_docs: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestError {
    pub file: PathBuf,
    /// 1-based line, when the parser knows it.
    pub line: Option<usize>,
    pub reason: String,
}

impl std::fmt::Display for ManifestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}: {}", self.file.display(), self.reason),
            None => write!(f, "{}: {}", self.file.display(), self.reason),
        }
    }
}

fn yaml_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for e in fs::read_dir(dir)? {
        let p = e?.path();
        if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

/// What a poll compares: each YAML entry's type, modification time and size (symlinks
/// followed; `stat` never blocks, whatever the entry is). Err: the folder cannot be listed.
pub type Fingerprint = Vec<(PathBuf, Option<(String, Option<SystemTime>, u64)>)>;

pub fn fingerprint(dir: &Path) -> std::io::Result<Fingerprint> {
    Ok(yaml_files(dir)?
        .into_iter()
        .map(|p| {
            let m = fs::metadata(&p).ok().map(|m| {
                (
                    file_kind(&m.file_type()).to_string(),
                    m.modified().ok(),
                    m.len(),
                )
            });
            (p, m)
        })
        .collect())
}

fn file_kind(t: &fs::FileType) -> &'static str {
    if t.is_file() {
        "regular file"
    } else if t.is_dir() {
        "directory"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

/// Reads one manifest: a regular file (after symlinks) of at most `limit` bytes of UTF-8.
/// Never blocks: the type is checked before opening, the open is non-blocking, and the type is
/// checked again on the open file (a FIFO swapped in meanwhile is caught there).
pub fn read_manifest(file: &Path, limit: u64) -> Result<String, ManifestError> {
    let err = |reason: String| ManifestError {
        file: file.to_path_buf(),
        line: None,
        reason,
    };
    let check = |m: &fs::Metadata| {
        if !m.is_file() {
            return Err(err(format!(
                "not a regular file (a {}): skipped",
                file_kind(&m.file_type())
            )));
        }
        if m.len() > limit {
            return Err(err(format!(
                "{} bytes is over the limit of {limit} bytes per manifest file: not read",
                m.len()
            )));
        }
        Ok(())
    };
    check(&fs::metadata(file).map_err(|e| err(e.to_string()))?)?;
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(file)
        .map_err(|e| err(e.to_string()))?;
    check(&f.metadata().map_err(|e| err(e.to_string()))?)?;
    let mut bytes = Vec::new();
    f.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| err(e.to_string()))?;
    if bytes.len() as u64 > limit {
        return Err(err(format!(
            "over the limit of {limit} bytes per manifest file (it grew while read): not read"
        )));
    }
    String::from_utf8(bytes).map_err(|e| err(format!("not UTF-8: {e}")))
}

/// Parses one file's documents, all or nothing.
pub fn parse_file(file: &Path, text: &str) -> Result<Manifests, ManifestError> {
    let err = |line: Option<usize>, reason: String| ManifestError {
        file: file.to_path_buf(),
        line,
        reason,
    };
    let mut out = Manifests::default();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(doc)
            .map_err(|e| err(e.location().map(|l| l.line()), e.to_string()))?;
        if value.is_null() {
            continue;
        }
        let kind = value
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or_default()
            .to_string();
        let api = value
            .get("apiVersion")
            .and_then(|k| k.as_str())
            .unwrap_or_default()
            .to_string();
        let doc_err = |e: serde_yaml::Error| {
            err(
                e.location().map(|l| l.line()),
                format!("document {}: {kind}: {e}", i + 1),
            )
        };
        match (api.as_str(), kind.as_str()) {
            ("v1", "Service") => {
                out.services
                    .push(serde_yaml::from_value(value).map_err(doc_err)?);
                out.service_docs.push(i + 1);
            }
            ("discovery.k8s.io/v1", "EndpointSlice") => {
                out.slices
                    .push(serde_yaml::from_value(value).map_err(doc_err)?);
                out.slice_docs.push(i + 1);
            }
            ("v1", "Node") => out
                .nodes
                .push(serde_yaml::from_value(value).map_err(doc_err)?),
            _ => {
                return Err(err(
                    None,
                    format!(
                        "document {}: unsupported apiVersion/kind {api:?}/{kind:?} (v1 Service, v1 Node, discovery.k8s.io/v1 EndpointSlice)",
                        i + 1
                    ),
                ));
            }
        }
    }
    Ok(out)
}

/// One read of the folder: the objects admitted, the files skipped, the objects refused.
#[derive(Debug, Default)]
pub struct Loaded {
    pub manifests: Manifests,
    pub errors: Vec<ManifestError>,
    pub refused: Vec<Refusal>,
}

fn origin(
    kind: &str,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    file: &Path,
    doc: usize,
) -> Origin {
    Origin {
        object: format!(
            "{kind} {}/{}",
            meta.namespace.as_deref().unwrap_or("default"),
            meta.name.as_deref().unwrap_or("")
        ),
        place: format!("{} document {doc}", file.display()),
    }
}

/// Reads every YAML file of `dir`: bad files are skipped and reported, invalid or conflicting
/// objects refused and reported (`validate`). Err: the folder cannot be listed.
pub fn load_dir(dir: &Path, rules: &Rules) -> std::io::Result<Loaded> {
    let files = yaml_files(dir)?;
    let mut loaded = Loaded::default();
    let (mut services, mut slices) = (Vec::new(), Vec::new());
    for file in files {
        let parsed = read_manifest(&file, MAX_FILE_BYTES).and_then(|text| parse_file(&file, &text));
        match parsed {
            Ok(m) => {
                for (svc, d) in m.services.into_iter().zip(m.service_docs) {
                    services.push((origin("Service", &svc.metadata, &file, d), svc));
                }
                for (s, d) in m.slices.into_iter().zip(m.slice_docs) {
                    slices.push((origin("EndpointSlice", &s.metadata, &file, d), s));
                }
                loaded.manifests.nodes.extend(m.nodes);
            }
            Err(e) => loaded.errors.push(e),
        }
    }
    loaded.manifests.services = validate::admit_services(services, rules, &mut loaded.refused);
    loaded.manifests.slices = validate::admit_slices(slices, &mut loaded.refused);
    loaded.refused.sort();
    Ok(loaded)
}

/// Starts the source on a thread of its own: publishes the manifests in `dir`, again whenever a
/// file changes (polled twice a second).
pub fn spawn(
    dir: PathBuf,
    rules: Rules,
    out: Publisher,
    metrics: Arc<Metrics>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    for r in Reason::ALL {
        metrics.manifest_refused.get_or_create(&label(r)).set(0);
    }
    std::thread::Builder::new()
        .name("petrel-manifests".into())
        .spawn(move || Watcher::default().run(&dir, &rules, &out, &metrics))
}

fn label(r: Reason) -> ReasonLabel {
    ReasonLabel {
        reason: r.label().to_string(),
    }
}

#[derive(Default)]
struct Watcher {
    last: Option<Fingerprint>,
    /// Whether the folder could be read at the last poll (None: not polled yet).
    ok: Option<bool>,
    /// What was logged at the last read: logged again only when it changes.
    logged: BTreeSet<String>,
    published: bool,
}

impl Watcher {
    fn run(mut self, dir: &Path, rules: &Rules, out: &Publisher, metrics: &Metrics) {
        loop {
            self.poll(dir, rules, out, metrics);
            std::thread::sleep(POLL);
        }
    }

    fn unavailable(&mut self, dir: &Path, e: &std::io::Error, metrics: &Metrics) {
        metrics.manifest_source_ok.set(0);
        self.last = None;
        if self.ok != Some(false) {
            let kept = if self.published {
                "keeping the last good state until it can be read again"
            } else {
                "nothing is programmed until it can be read"
            };
            tracing::error!(dir = %dir.display(), error = %e, "manifests folder cannot be read: {kept}");
        }
        self.ok = Some(false);
    }

    fn poll(&mut self, dir: &Path, rules: &Rules, out: &Publisher, metrics: &Metrics) {
        let fp = match fingerprint(dir) {
            Ok(fp) => fp,
            Err(e) => return self.unavailable(dir, &e, metrics),
        };
        if self.last.as_ref() == Some(&fp) {
            return;
        }
        let loaded = match load_dir(dir, rules) {
            Ok(l) => l,
            Err(e) => return self.unavailable(dir, &e, metrics),
        };
        if self.ok == Some(false) {
            tracing::info!(dir = %dir.display(), "manifests folder readable again");
        }
        self.ok = Some(true);
        metrics.manifest_source_ok.set(1);
        let mut logged = BTreeSet::new();
        for e in &loaded.errors {
            let key = e.to_string();
            if !self.logged.contains(&key) {
                tracing::error!(file = %e.file.display(), line = e.line, reason = %e.reason, "manifest skipped");
            }
            logged.insert(key);
        }
        for r in &loaded.refused {
            let key = format!("{}: {}: {}", r.place, r.object, r.message);
            if !self.logged.contains(&key) {
                tracing::error!(file = %r.place, object = %r.object, reason = r.reason.label(), "manifest object refused: {}", r.message);
            }
            logged.insert(key);
        }
        self.logged = logged;
        for reason in Reason::ALL {
            let n = loaded.refused.iter().filter(|r| r.reason == reason).count();
            metrics
                .manifest_refused
                .get_or_create(&label(reason))
                .set(n as i64);
        }
        let m = loaded.manifests;
        tracing::info!(dir = %dir.display(), services = m.services.len(), endpointslices = m.slices.len(), skipped = loaded.errors.len(), refused = loaded.refused.len(), "manifests read");
        out.send_replace(Some(Arc::new(Snapshot {
            services: m.services.into_iter().map(Into::into).collect(),
            slices: m.slices.into_iter().map(Into::into).collect(),
            nodes: m.nodes.into_iter().map(Into::into).collect(),
            manifest_errors: loaded.errors.len(),
            nodes_only: false,
        })));
        self.published = true;
        self.last = Some(fp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: [10.244.0.3]}]
ports: [{name: http, port: 8080, protocol: TCP}]
";

    #[test]
    fn multi_document_files_parse() {
        let m = parse_file(Path::new("a.yaml"), GOOD).expect("parses");
        assert_eq!((m.services.len(), m.slices.len()), (1, 1));
    }

    #[test]
    fn errors_name_file_line_and_reason() {
        let bad = "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec:\n  ports: [{port: eighty}]\n";
        let e = parse_file(Path::new("bad.yaml"), bad).expect_err("bad port");
        assert_eq!(e.file, PathBuf::from("bad.yaml"));
        assert!(e.reason.contains("Service"), "{e}");
        let e = parse_file(Path::new("x.yaml"), "kind: [unclosed\n").expect_err("syntax");
        assert!(e.line.is_some(), "{e}");
        let e = parse_file(
            Path::new("y.yaml"),
            "apiVersion: apps/v1\nkind: Deployment\n",
        )
        .expect_err("kind");
        assert!(e.reason.contains("unsupported"));
    }

    #[test]
    fn a_bad_file_does_not_stop_the_others() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("good.yaml"), GOOD).expect("write");
        fs::write(dir.path().join("bad.yaml"), "kind: [\n").expect("write");
        fs::write(dir.path().join("notes.txt"), "ignored").expect("write");
        let l = load_dir(dir.path(), &Rules::default()).expect("listed");
        assert_eq!(l.manifests.services.len(), 1);
        assert_eq!(l.errors.len(), 1);
        assert!(l.errors[0].file.ends_with("bad.yaml"));
    }

    #[test]
    fn only_regular_files_are_read_and_never_past_the_limit() {
        use std::os::unix::ffi::OsStrExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        fs::write(d.join("good.yaml"), GOOD).expect("write");
        std::os::unix::fs::symlink(d.join("good.yaml"), d.join("link.yaml")).expect("symlink");
        std::os::unix::fs::symlink("/dev/zero", d.join("zero.yaml")).expect("symlink");
        fs::create_dir(d.join("dir.yaml")).expect("mkdir");
        let fifo = std::ffi::CString::new(d.join("fifo.yaml").as_os_str().as_bytes()).expect("c");
        // SAFETY: a valid C string; mkfifo has no other precondition.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0, "mkfifo");
        let big = fs::File::create(d.join("big.yaml")).expect("create");
        big.set_len(MAX_FILE_BYTES + 1).expect("sparse file");
        let read = |name: &str| read_manifest(&d.join(name), MAX_FILE_BYTES);
        assert_eq!(read("link.yaml").expect("a symlink to a file"), GOOD);
        for (name, want) in [
            ("zero.yaml", "not a regular file (a character device)"),
            ("dir.yaml", "not a regular file (a directory)"),
            ("fifo.yaml", "not a regular file (a FIFO)"),
            (
                "big.yaml",
                "over the limit of 4194304 bytes per manifest file",
            ),
        ] {
            let e = read(name).expect_err(name);
            assert!(e.reason.contains(want), "{name}: {e}");
        }
        assert!(
            read_manifest(&d.join("good.yaml"), 10)
                .expect_err("limit")
                .reason
                .contains("over the limit of 10 bytes")
        );
        let l = load_dir(d, &Rules::default()).expect("listed");
        // good.yaml and link.yaml hold the same Service: the second is a duplicate.
        assert_eq!(l.manifests.services.len(), 1);
        assert_eq!(l.errors.len(), 4, "{:?}", l.errors);
        assert_eq!(l.refused.len(), 2, "{:?}", l.refused);
        assert!(l.refused.iter().all(|r| r.reason == Reason::DuplicateName));
        assert!(load_dir(&d.join("absent"), &Rules::default()).is_err());
        assert!(fingerprint(&d.join("absent")).is_err());
    }

    #[test]
    fn invalid_objects_are_refused_with_their_file_and_the_rest_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("a.yaml"), GOOD).expect("write");
        fs::write(
            dir.path().join("b.yaml"),
            "apiVersion: v1\nkind: Service\nmetadata: {name: wrap}\nspec: {clusterIP: 10.96.0.11, ports: [{port: 70000}]}\n",
        )
        .expect("write");
        let l = load_dir(dir.path(), &Rules::default()).expect("listed");
        assert_eq!(l.manifests.services.len(), 1);
        assert_eq!(l.manifests.slices.len(), 1);
        assert_eq!(l.refused.len(), 1);
        let r = &l.refused[0];
        assert!(r.place.ends_with("b.yaml document 1"), "{r:?}");
        assert_eq!(r.object, "Service default/wrap");
        assert!(
            r.message
                .contains("spec.ports[0].port: Invalid value: 70000"),
            "{r:?}"
        );
    }

    #[test]
    fn a_vanished_folder_keeps_the_last_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = dir.path().join("m");
        fs::create_dir(&m).expect("mkdir");
        fs::write(m.join("a.yaml"), GOOD).expect("write");
        let (tx, rx) = super::super::channel();
        let metrics = Metrics::new();
        let mut w = Watcher::default();
        w.poll(&m, &Rules::default(), &tx, &metrics);
        assert_eq!(metrics.manifest_source_ok.get(), 1);
        let first = rx.borrow().clone().expect("published");
        assert_eq!(first.services.len(), 1);
        fs::rename(&m, dir.path().join("gone")).expect("rename");
        w.poll(&m, &Rules::default(), &tx, &metrics);
        assert_eq!(metrics.manifest_source_ok.get(), 0);
        let kept = rx.borrow().clone().expect("still published");
        assert!(Arc::ptr_eq(&first, &kept), "the last good state stays");
        fs::rename(dir.path().join("gone"), &m).expect("rename back");
        w.poll(&m, &Rules::default(), &tx, &metrics);
        assert_eq!(metrics.manifest_source_ok.get(), 1);
        assert_eq!(rx.borrow().clone().expect("published").services.len(), 1);
    }
}
