//! The incremental path (`Memo::update` + `Syncer::sync_changed`) against the full one
//! (`desired::compute` + `Syncer::sync`), over random sequences of watch events: after every
//! event the desired state equals a full computation, and at the end a full sync of the same
//! maps finds nothing to write, so the maps are what one full sync gives.

use std::{net::Ipv4Addr, sync::Arc};

use k8s_openapi::{
    api::{
        core::v1::{Service, ServicePort, ServiceSpec},
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
};
use petrel_datapath::maps::{FakeMaps, ServiceMaps};
use proptest::prelude::*;

use crate::{
    desired::{self, LABEL_SERVICE_NAME, Memo, NodeFacts, Options},
    sync::Syncer,
};

/// Services s0..s5; s4 and s5 ask for s0's ClusterIP (conflicts the older one wins).
const SERVICES: u8 = 6;

#[derive(Clone, Debug)]
enum Event {
    /// Service i, (NodePort?, port 80 or 81, created in year 2020 + n).
    Service(u8, bool, bool, u8),
    DeleteService(u8),
    /// Slice j of service i, with endpoints: for each of 4 addresses, present?, ready?,
    /// terminating?, on this node?
    Slice(u8, u8, [(bool, bool, bool, bool); 4]),
    DeleteSlice(u8, u8),
    /// The node's address: which NodePort frontends exist (every service computed again).
    NodeIp(u8),
}

fn event() -> impl Strategy<Value = Event> {
    let ep = (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>());
    prop_oneof![
        4 => (0..SERVICES, any::<bool>(), any::<bool>(), 0..3u8)
            .prop_map(|(i, np, p, y)| Event::Service(i, np, p, y)),
        1 => (0..SERVICES).prop_map(Event::DeleteService),
        6 => (0..SERVICES, 0..2u8, [ep, ep, ep, ep])
            .prop_map(|(i, j, e)| Event::Slice(i, j, e)),
        1 => (0..SERVICES, 0..2u8).prop_map(|(i, j)| Event::DeleteSlice(i, j)),
        1 => (1..3u8).prop_map(Event::NodeIp),
    ]
}

fn meta(name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some("default".into()),
        ..ObjectMeta::default()
    }
}

fn service(i: u8, node_port: bool, port81: bool, year: u8) -> Service {
    let vip = if i >= 4 { 0 } else { i };
    let mut m = meta(format!("s{i}"));
    m.creation_timestamp = Some(Time(
        format!("{}-01-01T00:00:00Z", 2020 + u32::from(year))
            .parse()
            .expect("time"),
    ));
    Service {
        metadata: m,
        spec: Some(ServiceSpec {
            type_: Some(if node_port { "NodePort" } else { "ClusterIP" }.into()),
            cluster_ip: Some(format!("10.96.0.{}", vip + 1)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: if port81 { 81 } else { 80 },
                node_port: node_port.then_some(30000 + i32::from(i)),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

fn slice(i: u8, j: u8, eps: &[(bool, bool, bool, bool); 4]) -> EndpointSlice {
    let mut m = meta(format!("s{i}-{j}"));
    m.labels = Some([(LABEL_SERVICE_NAME.to_string(), format!("s{i}"))].into());
    EndpointSlice {
        metadata: m,
        address_type: "IPv4".into(),
        endpoints: eps
            .iter()
            .enumerate()
            .filter(|(_, e)| e.0)
            .map(|(k, &(_, ready, terminating, local))| Endpoint {
                // Both slices of a service may hold an address (an endpoint moving between
                // slices); services never share one.
                addresses: vec![format!("10.244.{i}.{}", k + 1)],
                conditions: Some(EndpointConditions {
                    ready: Some(ready),
                    serving: Some(ready || terminating),
                    terminating: Some(terminating),
                }),
                node_name: Some(if local { "n1" } else { "n2" }.into()),
                ..Endpoint::default()
            })
            .collect(),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            protocol: Some("TCP".into()),
            ..EndpointPort::default()
        }]),
    }
}

/// The caches: objects by name, replaced by a new `Arc` on every event (as a watch delivers).
#[derive(Default)]
struct Cluster {
    services: Vec<(String, Arc<Service>)>,
    slices: Vec<(String, Arc<EndpointSlice>)>,
    node_ip: u8,
}

fn put<T>(v: &mut Vec<(String, Arc<T>)>, name: String, obj: T) {
    v.retain(|(n, _)| *n != name);
    v.push((name, Arc::new(obj)));
}

impl Cluster {
    fn apply(&mut self, e: &Event) {
        match e {
            Event::Service(i, np, p, y) => {
                put(
                    &mut self.services,
                    format!("s{i}"),
                    service(*i, *np, *p, *y),
                );
            }
            Event::DeleteService(i) => self.services.retain(|(n, _)| *n != format!("s{i}")),
            Event::Slice(i, j, eps) => {
                put(&mut self.slices, format!("s{i}-{j}"), slice(*i, *j, eps));
            }
            Event::DeleteSlice(i, j) => self.slices.retain(|(n, _)| *n != format!("s{i}-{j}")),
            Event::NodeIp(n) => self.node_ip = *n,
        }
    }

    fn snapshot(&self) -> (Vec<Arc<Service>>, Vec<Arc<EndpointSlice>>, NodeFacts) {
        let node = NodeFacts {
            name: "n1".into(),
            ips: vec![Ipv4Addr::new(192, 168, 1, self.node_ip)],
            zone: None,
            node_port_ips: None,
        };
        (
            self.services.iter().map(|(_, s)| s.clone()).collect(),
            self.slices.iter().map(|(_, s)| s.clone()).collect(),
            node,
        )
    }
}

fn syncer() -> Syncer<FakeMaps> {
    let mut maps = ServiceMaps::new(FakeMaps::new());
    maps.set_maglev_size(7).expect("maglev size");
    Syncer::adopt(maps, 64, 100_000).expect("adopt")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn incremental_updates_give_the_maps_of_one_full_sync(
        events in prop::collection::vec(event(), 1..40),
        maglev in any::<bool>(),
    ) {
        let opts = Options { maglev };
        let mut cluster = Cluster { node_ip: 1, ..Cluster::default() };
        let mut memo = Memo::default();
        let mut s = syncer();
        // The first sync is a full one, as the agent's.
        let (svcs, slices, node) = cluster.snapshot();
        memo.update(&svcs, &slices, &node, opts);
        s.sync(memo.desired());
        for e in &events {
            cluster.apply(e);
            let (svcs, slices, node) = cluster.snapshot();
            let changes = memo.update(&svcs, &slices, &node, opts);
            prop_assert_eq!(memo.desired(), &desired::compute(&svcs, &slices, &node, opts), "after {:?}", e);
            let r = s.sync_changed(memo.desired(), &changes.frontends);
            prop_assert!(r.refused.is_empty(), "{:?}", r.refused);
        }
        let incremental = s.maps().store().dump_lines();
        let r = s.sync(memo.desired());
        prop_assert_eq!((r.upserted, r.removed), (0, 0), "a full sync found work left");
        prop_assert_eq!(&s.maps().store().dump_lines(), &incremental);
        // And a fresh agent's one full sync of the final state holds as many entries.
        let mut fresh = syncer();
        fresh.sync(&desired::compute(&cluster.snapshot().0, &cluster.snapshot().1, &cluster.snapshot().2, opts));
        // (A freed Maglev ring keeps its last table until handed out again.)
        let entries = |l: &[String]| l.iter().filter(|l| !l.starts_with("MAGLEV")).count();
        prop_assert_eq!(entries(&fresh.maps().store().dump_lines()), entries(&incremental));
        prop_assert_eq!(fresh.counts(), s.counts());
        prop_assert_eq!(fresh.fill(), s.fill());
    }
}
