//! Services, EndpointSlices and Nodes from an API server: one reflector store each (watchers
//! retry with backoff and re-list after the API server returns; meanwhile the stores, and so the
//! datapath, keep the last state), a snapshot published after every event.
//!
//! EndpointSlices are read as discovery.k8s.io/v1 where the server has it (Kubernetes 1.21+) and
//! as v1beta1 otherwise (1.19, 1.20: their EndpointSlice controller writes only v1beta1), each
//! v1beta1 object converted to v1 on arrival.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::{StreamExt as _, stream::BoxStream};
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    api::{ApiResource, DynamicObject, GroupVersionKind},
    runtime::{WatchStreamExt as _, reflector, watcher},
};
use tokio::sync::Notify;

use super::{Publisher, Snapshot, project};

/// Watches the API server named by `kubeconfig` (in-cluster configuration when None) and
/// publishes snapshots of what it holds, the first once every kind has listed.
pub async fn watch(kubeconfig: Option<std::path::PathBuf>, node: String, out: Publisher) {
    let client = connect(kubeconfig.as_deref()).await;
    let (services, svc_writer) = reflector::store::<Service>();
    let (slices, slice_writer) = reflector::store::<EndpointSlice>();
    let (nodes, node_writer) = reflector::store::<Node>();
    // Each object is projected on arrival to what petrel reads (`project`): the stores hold no
    // managedFields, no foreign annotations, no pod references.
    let svc_events = reflector(
        svc_writer,
        watcher(kube::Api::all(client.clone()), watch_config())
            .default_backoff()
            .modify(project::service),
    );
    let slice_events = reflector(
        slice_writer,
        slice_watch(&client, slice_version(&client).await).modify(project::slice),
    );
    // Every Node: the others' podCIDRs and addresses are what routing needs. A Node event that
    // changes nothing of its projection (a status heartbeat, a condition, images) is dropped
    // before the store: it does not wake the sync.
    let node_events = reflector(
        node_writer,
        watcher(
            kube::Api::<Node>::all(client),
            watcher::Config::default().any_semantic(),
        )
        .default_backoff()
        .modify(project::node)
        .filter(changes_store(nodes.clone())),
    );
    // Every event (already applied to its store when the stream yields it) wakes the loop
    // below, which snapshots the stores: a change reaches the datapath as soon as the sync
    // loop's minimum interval allows.
    let changed = Arc::new(Notify::new());
    tokio::spawn(svc_events.for_each(wake(changed.clone())));
    tokio::spawn(slice_events.for_each(wake(changed.clone())));
    tokio::spawn(node_events.for_each(wake(changed.clone())));
    // The Node list alone lets the node be wired (routes, petrel-cni's pod CIDR and conflist, so
    // kubelet can start pods) while a large cluster's Services and EndpointSlices still list.
    let listed = Arc::new(AtomicBool::new(false));
    {
        let (services, slices, listed, changed) = (
            services.clone(),
            slices.clone(),
            listed.clone(),
            changed.clone(),
        );
        tokio::spawn(async move {
            let _ = services.wait_until_ready().await;
            let _ = slices.wait_until_ready().await;
            listed.store(true, Ordering::Release);
            changed.notify_one();
        });
    }
    let _ = nodes.wait_until_ready().await;
    tracing::info!(%node, "Nodes listed: wiring the node");
    let mut announced = false;
    loop {
        let all = listed.load(Ordering::Acquire);
        if all && !announced {
            tracing::info!(%node, "Services, EndpointSlices and Nodes listed: programming");
            announced = true;
        }
        out.send_replace(Some(Arc::new(Snapshot {
            services: if all { services.state() } else { Vec::new() },
            slices: if all { slices.state() } else { Vec::new() },
            nodes: nodes.state(),
            manifest_errors: 0,
            nodes_only: !all,
        })));
        changed.notified().await;
    }
}

/// kube-proxy's selector for Services and EndpointSlices (the EndpointSlice controller copies a
/// service's labels onto its slices and adds the headless one): objects of services another
/// proxy handles, and of headless services, are never sent. An object that stops matching (the
/// label added later) arrives as a deletion. Lists are served from the API server's watch cache
/// (resourceVersion 0), not from etcd.
pub const SELECTOR: &str =
    "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

fn watch_config() -> watcher::Config {
    watcher::Config::default().labels(SELECTOR).any_semantic()
}

/// A stream filter that lets through every event except an `Apply` whose object the store
/// already holds unchanged (after projection).
fn changes_store<K>(
    store: reflector::Store<K>,
) -> impl FnMut(&Result<watcher::Event<K>, watcher::Error>) -> futures::future::Ready<bool>
where
    K: kube::Resource<DynamicType = ()> + Clone + PartialEq + 'static,
{
    move |event| {
        let unchanged = match event {
            Ok(watcher::Event::Apply(obj)) => store
                .get(&reflector::ObjectRef::from_obj(obj))
                .is_some_and(|held| *held == *obj),
            _ => false,
        };
        futures::future::ready(!unchanged)
    }
}

/// The EndpointSlice API versions petrel reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SliceVersion {
    V1,
    V1beta1,
}

/// v1 when the server serves it, else v1beta1 when it serves that; v1 (and a warning) when it
/// serves neither or cannot say, so the watch retries until one appears.
async fn slice_version(client: &kube::Client) -> SliceVersion {
    let served = match client.list_api_groups().await {
        Ok(groups) => groups
            .groups
            .into_iter()
            .find(|g| g.name == "discovery.k8s.io")
            .map(|g| g.versions.into_iter().map(|v| v.version).collect())
            .unwrap_or_default(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the API groups: reading EndpointSlices as v1");
            Vec::new()
        }
    };
    let version = pick_slice_version(&served);
    if version == SliceVersion::V1 && !served.iter().any(|v| v == "v1") {
        tracing::warn!(
            ?served,
            "the API server serves no discovery.k8s.io/v1 or v1beta1: no EndpointSlices until it does"
        );
    }
    tracing::info!(?version, "reading discovery.k8s.io EndpointSlices");
    version
}

/// The version to read among those `served` of discovery.k8s.io.
pub fn pick_slice_version(served: &[String]) -> SliceVersion {
    if !served.iter().any(|v| v == "v1") && served.iter().any(|v| v == "v1beta1") {
        SliceVersion::V1beta1
    } else {
        SliceVersion::V1
    }
}

type SliceEvents = BoxStream<'static, Result<watcher::Event<EndpointSlice>, watcher::Error>>;

/// EndpointSlice events as v1 objects, whichever version the server serves.
fn slice_watch(client: &kube::Client, version: SliceVersion) -> SliceEvents {
    match version {
        SliceVersion::V1 => watcher(kube::Api::all(client.clone()), watch_config())
            .default_backoff()
            .boxed(),
        SliceVersion::V1beta1 => {
            let gvk = GroupVersionKind::gvk("discovery.k8s.io", "v1beta1", "EndpointSlice");
            let resource = ApiResource::from_gvk_with_plural(&gvk, "endpointslices");
            let api = kube::Api::<DynamicObject>::all_with(client.clone(), &resource);
            watcher(api, watch_config())
                .default_backoff()
                .filter_map(|event| futures::future::ready(event.map(to_v1_event).transpose()))
                .boxed()
        }
    }
}

/// One v1beta1 event as a v1 event; None (logged) when its object cannot be read as a slice.
fn to_v1_event(event: watcher::Event<DynamicObject>) -> Option<watcher::Event<EndpointSlice>> {
    use watcher::Event as E;
    let convert = |o: DynamicObject| {
        let name = format!(
            "{}/{}",
            o.metadata.namespace.as_deref().unwrap_or_default(),
            o.metadata.name.as_deref().unwrap_or_default()
        );
        serde_json::to_value(o)
            .map_err(|e| e.to_string())
            .and_then(v1beta1_to_v1)
            .map_err(|error| tracing::warn!(slice = %name, %error, "skipping an unreadable v1beta1 EndpointSlice"))
            .ok()
    };
    Some(match event {
        E::Apply(o) => E::Apply(convert(o)?),
        E::Delete(o) => E::Delete(convert(o)?),
        E::InitApply(o) => E::InitApply(convert(o)?),
        E::Init => E::Init,
        E::InitDone => E::InitDone,
    })
}

/// A discovery.k8s.io/v1beta1 EndpointSlice (as JSON) as the v1 object the API server would
/// serve for it: the endpoints' `topology` map becomes `nodeName` and `zone` (the v1beta1 ->
/// v1 conversion of Kubernetes 1.21), everything else has the same shape.
pub fn v1beta1_to_v1(mut slice: serde_json::Value) -> Result<EndpointSlice, String> {
    use serde_json::Value;
    let obj = slice.as_object_mut().ok_or("not a JSON object")?;
    obj.insert("apiVersion".into(), "discovery.k8s.io/v1".into());
    obj.insert("kind".into(), "EndpointSlice".into());
    if let Some(endpoints) = obj.get_mut("endpoints").and_then(Value::as_array_mut) {
        for ep in endpoints.iter_mut().filter_map(Value::as_object_mut) {
            let Some(Value::Object(topology)) = ep.remove("topology") else {
                continue;
            };
            for (label, field) in [
                ("kubernetes.io/hostname", "nodeName"),
                ("topology.kubernetes.io/zone", "zone"),
            ] {
                if let Some(v) = topology.get(label).filter(|_| !ep.contains_key(field)) {
                    ep.insert(field.into(), v.clone());
                }
            }
        }
    }
    serde_json::from_value(slice).map_err(|e| e.to_string())
}

/// A stream callback that only wakes whoever waits on `notify`.
fn wake<T>(notify: Arc<Notify>) -> impl FnMut(T) -> futures::future::Ready<()> {
    move |_| {
        notify.notify_one();
        futures::future::ready(())
    }
}

/// A client of a reachable API server: an unreachable one at start is retried with backoff, not
/// a crash.
pub(crate) async fn connect(kubeconfig: Option<&Path>) -> kube::Client {
    let mut delay = Duration::from_millis(500);
    loop {
        match client(kubeconfig).await {
            Ok(c) => return c,
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot reach the API server");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

async fn client(
    kubeconfig: Option<&Path>,
) -> Result<kube::Client, Box<dyn std::error::Error + Send + Sync>> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await?
        }
        None => kube::Config::incluster()?,
    };
    let client = kube::Client::try_from(config)?;
    client.apiserver_version().await?;
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_event_that_changes_nothing_petrel_reads_is_dropped() {
        use k8s_openapi::api::core::v1::{NodeCondition, NodeStatus};
        let (store, mut writer) = reflector::store::<Node>();
        let heartbeat = |second: i64, rv: &str, taint: bool| {
            let mut n = Node::default();
            n.metadata.name = Some("n1".into());
            n.metadata.resource_version = Some(rv.into());
            n.spec = Some(k8s_openapi::api::core::v1::NodeSpec {
                pod_cidr: Some("10.244.1.0/24".into()),
                unschedulable: taint.then_some(true),
                taints: taint.then(|| vec![Default::default()]),
                ..Default::default()
            });
            n.status = Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    last_heartbeat_time: Some(
                        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                            k8s_openapi::jiff::Timestamp::from_second(second).expect("time"),
                        ),
                    ),
                    ..Default::default()
                }]),
                ..Default::default()
            });
            project::node(&mut n);
            n
        };
        let mut passes = changes_store(store);
        let mut run = |e: watcher::Event<Node>| {
            let pass = passes(&Ok(e.clone())).into_inner();
            if pass {
                writer.apply_watcher_event(&e);
            }
            pass
        };
        assert!(run(watcher::Event::Apply(heartbeat(1, "1", false))), "new");
        assert!(
            !run(watcher::Event::Apply(heartbeat(2, "2", false))),
            "heartbeat"
        );
        assert!(
            !run(watcher::Event::Apply(heartbeat(3, "3", false))),
            "heartbeat"
        );
        assert!(
            run(watcher::Event::Apply(heartbeat(4, "4", true))),
            "tainted"
        );
        // A relist and a deletion always pass.
        assert!(run(watcher::Event::InitApply(heartbeat(5, "5", true))));
        assert!(run(watcher::Event::Delete(heartbeat(6, "6", true))));
    }

    #[test]
    fn v1_is_read_where_served_and_v1beta1_only_without_it() {
        let v = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(pick_slice_version(&v(&["v1", "v1beta1"])), SliceVersion::V1);
        assert_eq!(pick_slice_version(&v(&["v1"])), SliceVersion::V1);
        assert_eq!(pick_slice_version(&v(&["v1beta1"])), SliceVersion::V1beta1);
        assert_eq!(pick_slice_version(&v(&[])), SliceVersion::V1);
    }

    #[test]
    fn a_v1beta1_slice_reads_as_its_v1_conversion() {
        // As a 1.20 EndpointSlice controller writes it.
        let beta = serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1beta1",
            "kind": "EndpointSlice",
            "metadata": {"name": "web-abcde", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.244.1.5"], "conditions": {"ready": true},
                 "topology": {"kubernetes.io/hostname": "node-a",
                              "topology.kubernetes.io/zone": "z1"},
                 "targetRef": {"kind": "Pod", "name": "web-1", "namespace": "default"}},
                {"addresses": ["10.244.2.7"], "conditions": {"ready": false},
                 "nodeName": "node-b", "topology": {"kubernetes.io/hostname": "ignored"}},
                {"addresses": ["10.244.3.9"]}
            ],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        });
        let s = v1beta1_to_v1(beta).expect("converts");
        assert_eq!(s.metadata.name.as_deref(), Some("web-abcde"));
        assert_eq!(s.address_type, "IPv4");
        let ep = &s.endpoints;
        assert_eq!(ep.len(), 3);
        assert_eq!(ep[0].addresses, ["10.244.1.5"]);
        assert_eq!(ep[0].node_name.as_deref(), Some("node-a"));
        assert_eq!(ep[0].zone.as_deref(), Some("z1"));
        assert_eq!(ep[0].conditions.as_ref().and_then(|c| c.ready), Some(true));
        // An explicit nodeName wins over the topology label.
        assert_eq!(ep[1].node_name.as_deref(), Some("node-b"));
        assert_eq!(ep[1].conditions.as_ref().and_then(|c| c.ready), Some(false));
        assert_eq!(ep[2].node_name, None);
        let port = &s.ports.as_ref().expect("ports")[0];
        assert_eq!(
            (port.name.as_deref(), port.port),
            (Some("http"), Some(8080))
        );
        assert!(v1beta1_to_v1(serde_json::json!([1])).is_err());
        assert!(
            v1beta1_to_v1(serde_json::json!({"metadata": {"name": "x"}, "endpoints": "no"}))
                .is_err()
        );
    }
}
