//! Standalone mode: Services, EndpointSlices and Nodes read from YAML files in a folder (several
//! documents per file allowed) instead of from an API server. A file that does not parse is
//! reported (file, line, reason) and skipped as a whole; the others keep working.

use std::{
    fs,
    path::{Path, PathBuf},
    time::SystemTime,
};

use k8s_openapi::api::{core::v1::Node, core::v1::Service, discovery::v1::EndpointSlice};
use serde::Deserialize as _;

use super::{Publisher, Snapshot};

#[derive(Clone, Debug, Default)]
pub struct Manifests {
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
    pub nodes: Vec<Node>,
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
    let mut files: Vec<PathBuf> = fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

/// Modification times and sizes of the folder's YAML files: compared between polls to see
/// whether anything changed.
pub fn fingerprint(dir: &Path) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    yaml_files(dir)
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let m = fs::metadata(&p).ok();
            let modified = m.as_ref().and_then(|m| m.modified().ok());
            (p, modified, m.map_or(0, |m| m.len()))
        })
        .collect()
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
            ("v1", "Service") => out
                .services
                .push(serde_yaml::from_value(value).map_err(doc_err)?),
            ("discovery.k8s.io/v1", "EndpointSlice") => out
                .slices
                .push(serde_yaml::from_value(value).map_err(doc_err)?),
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

/// Reads every YAML file of `dir`; bad files are skipped and reported.
pub fn load_dir(dir: &Path) -> (Manifests, Vec<ManifestError>) {
    let mut all = Manifests::default();
    let mut errors = Vec::new();
    let files = match yaml_files(dir) {
        Ok(f) => f,
        Err(e) => {
            errors.push(ManifestError {
                file: dir.to_path_buf(),
                line: None,
                reason: e.to_string(),
            });
            return (all, errors);
        }
    };
    for file in files {
        let parsed = fs::read_to_string(&file)
            .map_err(|e| ManifestError {
                file: file.clone(),
                line: None,
                reason: e.to_string(),
            })
            .and_then(|text| parse_file(&file, &text));
        match parsed {
            Ok(m) => {
                all.services.extend(m.services);
                all.slices.extend(m.slices);
                all.nodes.extend(m.nodes);
            }
            Err(e) => errors.push(e),
        }
    }
    (all, errors)
}

/// Publishes the manifests in `dir`, again whenever a file changes (polled twice a second).
pub async fn watch(dir: PathBuf, out: Publisher) {
    let mut last = None;
    loop {
        let fp = fingerprint(&dir);
        if last.as_ref() != Some(&fp) {
            let (m, errors) = load_dir(&dir);
            for e in &errors {
                tracing::error!(file = %e.file.display(), line = e.line, reason = %e.reason, "manifest skipped");
            }
            tracing::info!(dir = %dir.display(), services = m.services.len(), endpointslices = m.slices.len(), skipped = errors.len(), "manifests read");
            out.send_replace(Some(std::sync::Arc::new(Snapshot {
                services: m.services.into_iter().map(Into::into).collect(),
                slices: m.slices.into_iter().map(Into::into).collect(),
                nodes: m.nodes.into_iter().map(Into::into).collect(),
                manifest_errors: errors.len(),
                nodes_only: false,
            })));
            last = Some(fp);
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
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
        let (m, errors) = load_dir(dir.path());
        assert_eq!(m.services.len(), 1);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].file.ends_with("bad.yaml"));
    }
}
