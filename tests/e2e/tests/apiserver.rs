//! The real kube-apiserver fixture: Services and discovery.k8s.io/v1 EndpointSlices round-trip
//! through the `kube` crate.

use k8s_openapi::{
    api::{
        core::v1::{Service, ServicePort, ServiceSpec},
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api,
    api::{ListParams, PostParams},
};
use petrel_testbed::apiserver::KubeApiServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_and_lists_services_and_endpointslices() {
    let server = KubeApiServer::start().await;
    let client = server.client().await;

    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc = Service {
        metadata: ObjectMeta {
            name: Some("web".into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            selector: Some([("app".to_string(), "web".to_string())].into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    services
        .create(&PostParams::default(), &svc)
        .await
        .expect("create service");
    let listed = services
        .list(&ListParams::default())
        .await
        .expect("list services");
    let web = listed
        .items
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some("web"))
        .expect("web listed");
    let cluster_ip: std::net::Ipv4Addr = web
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .expect("clusterIP")
        .parse()
        .expect("IPv4 clusterIP");
    assert!(
        ipnet_contains("10.96.0.0", 12, cluster_ip),
        "clusterIP {cluster_ip} allocated from the service range"
    );

    let slices: Api<EndpointSlice> = Api::namespaced(client, "default");
    let slice = EndpointSlice {
        metadata: ObjectMeta {
            name: Some("web-abc".into()),
            labels: Some([("kubernetes.io/service-name".to_string(), "web".to_string())].into()),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: vec![Endpoint {
            addresses: vec!["10.244.1.5".into()],
            conditions: Some(EndpointConditions {
                ready: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
    };
    slices
        .create(&PostParams::default(), &slice)
        .await
        .expect("create endpointslice v1");
    let got = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
        .await
        .expect("list endpointslices");
    assert_eq!(got.items.len(), 1);
    assert_eq!(got.items[0].endpoints[0].addresses, ["10.244.1.5"]);
    assert_eq!(
        got.items[0].ports.as_ref().and_then(|p| p[0].port),
        Some(8080)
    );
}

fn ipnet_contains(net: &str, len: u32, ip: std::net::Ipv4Addr) -> bool {
    let net: std::net::Ipv4Addr = net.parse().expect("net");
    let mask = u32::MAX << (32 - len);
    u32::from(ip) & mask == u32::from(net) & mask
}
