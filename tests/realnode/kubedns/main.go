// petrel-kubedns: the cluster DNS of the real test cluster (tests/realnode/cluster.sh), which has no
// CoreDNS (Debian has no coredns package and no registry is reachable). client-go informers and
// miekg/dns, both vendored in the Kubernetes v1.20.2 tree it is built in (xtask/scripts/build-kube.sh
// copies this file to cmd/petrel-kubedns there).
// Serves (UDP+TCP) <svc>.<ns>.svc.<domain> A (ClusterIP, or ready endpoints if headless),
// <hostname>.<svc>.<ns>.svc.<domain> A, ExternalName -> CNAME (+A if target is in-cluster),
// _<port>._<proto>.<svc>.<ns>.svc.<domain> SRV, <a-b-c-d>.<ns>.pod.<domain> A, PTR for svc/endpoint IPs.
// Unknown names in the cluster domain: NXDOMAIN; names outside: NXDOMAIN too (no upstream here).
package main

import (
	"flag"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/miekg/dns"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listers "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
)

var (
	kubeconfig = flag.String("kubeconfig", "", "kubeconfig")
	listen     = flag.String("listen", "0.0.0.0:53", "listen address")
	domain     = flag.String("domain", "cluster.local", "cluster domain")
	ttl        = flag.Uint("ttl", 5, "TTL")
	svcL       listers.ServiceLister
	epL        listers.EndpointsLister
)

func a(name, ip string) dns.RR {
	return &dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: uint32(*ttl)}, A: net.ParseIP(ip).To4()}
}

func epIPs(ns, name string, notReady bool) (ips []string, hosts map[string]string) {
	hosts = map[string]string{}
	ep, err := epL.Endpoints(ns).Get(name)
	if err != nil {
		return nil, hosts
	}
	for _, s := range ep.Subsets {
		addrs := s.Addresses
		if notReady {
			addrs = append(append([]v1.EndpointAddress{}, addrs...), s.NotReadyAddresses...)
		}
		for _, ad := range addrs {
			ips = append(ips, ad.IP)
			if ad.Hostname != "" {
				hosts[ad.Hostname] = ad.IP
			}
		}
	}
	return ips, hosts
}

// answer returns RRs and whether the name exists
func answer(qname string, qtype uint16, depth int) ([]dns.RR, bool) {
	d := "." + *domain + "."
	n := strings.ToLower(qname)
	if qtype == dns.TypePTR {
		return ptr(n)
	}
	if !strings.HasSuffix(n, d) || depth > 4 {
		return nil, false
	}
	parts := strings.Split(strings.TrimSuffix(n, d), ".")
	switch {
	case len(parts) == 3 && parts[2] == "pod": // a-b-c-d.ns.pod
		ip := strings.ReplaceAll(parts[0], "-", ".")
		if net.ParseIP(ip).To4() == nil {
			return nil, false
		}
		if qtype == dns.TypeA || qtype == dns.TypeANY {
			return []dns.RR{a(qname, ip)}, true
		}
		return nil, true
	case len(parts) >= 3 && parts[len(parts)-1] == "svc":
		ns, svcName := parts[len(parts)-2], parts[len(parts)-3]
		svc, err := svcL.Services(ns).Get(svcName)
		if err != nil {
			return nil, false
		}
		rest := parts[:len(parts)-3]
		if len(rest) == 2 && strings.HasPrefix(rest[0], "_") && strings.HasPrefix(rest[1], "_") { // SRV
			for _, p := range svc.Spec.Ports {
				if "_"+strings.ToLower(p.Name) == rest[0] && "_"+strings.ToLower(string(p.Protocol)) == rest[1] {
					target := fmt.Sprintf("%s.%s.svc%s", svcName, ns, d)
					if qtype != dns.TypeSRV && qtype != dns.TypeANY {
						return nil, true
					}
					return []dns.RR{&dns.SRV{Hdr: dns.RR_Header{Name: qname, Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: uint32(*ttl)},
						Priority: 0, Weight: 100, Port: uint16(p.Port), Target: target}}, true
				}
			}
			return nil, false
		}
		if len(rest) == 1 { // hostname.svc.ns.svc
			_, hosts := epIPs(ns, svcName, svc.Spec.PublishNotReadyAddresses)
			ip, ok := hosts[rest[0]]
			if !ok {
				return nil, false
			}
			if qtype == dns.TypeA || qtype == dns.TypeANY {
				return []dns.RR{a(qname, ip)}, true
			}
			return nil, true
		}
		if len(rest) != 0 {
			return nil, false
		}
		if svc.Spec.Type == v1.ServiceTypeExternalName {
			t := dns.Fqdn(svc.Spec.ExternalName)
			rr := []dns.RR{&dns.CNAME{Hdr: dns.RR_Header{Name: qname, Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: uint32(*ttl)}, Target: t}}
			if more, ok := answer(t, qtype, depth+1); ok {
				rr = append(rr, more...)
			}
			return rr, true
		}
		if qtype != dns.TypeA && qtype != dns.TypeANY {
			return nil, true
		}
		if svc.Spec.ClusterIP != "" && svc.Spec.ClusterIP != v1.ClusterIPNone {
			return []dns.RR{a(qname, svc.Spec.ClusterIP)}, true
		}
		ips, _ := epIPs(ns, svcName, svc.Spec.PublishNotReadyAddresses)
		var rr []dns.RR
		for _, ip := range ips {
			rr = append(rr, a(qname, ip))
		}
		return rr, true
	}
	// intermediate names (ns.svc.domain, svc.domain, domain) exist but have no data
	return nil, len(parts) <= 2
}

func ptr(n string) ([]dns.RR, bool) {
	if !strings.HasSuffix(n, ".in-addr.arpa.") {
		return nil, false
	}
	o := strings.Split(strings.TrimSuffix(n, ".in-addr.arpa."), ".")
	if len(o) != 4 {
		return nil, false
	}
	ip := o[3] + "." + o[2] + "." + o[1] + "." + o[0]
	svcs, _ := svcL.List(labels.Everything())
	for _, s := range svcs {
		if s.Spec.ClusterIP == ip {
			return []dns.RR{&dns.PTR{Hdr: dns.RR_Header{Name: n, Rrtype: dns.TypePTR, Class: dns.ClassINET, Ttl: uint32(*ttl)},
				Ptr: fmt.Sprintf("%s.%s.svc.%s.", s.Name, s.Namespace, *domain)}}, true
		}
	}
	return nil, false
}

func handle(w dns.ResponseWriter, r *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	if len(r.Question) == 1 {
		q := r.Question[0]
		rr, ok := answer(q.Name, q.Qtype, 0)
		if !ok {
			m.Rcode = dns.RcodeNameError
		}
		m.Answer = rr
	}
	w.WriteMsg(m)
}

func main() {
	klog.InitFlags(nil)
	flag.Parse()
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		klog.Fatal(err)
	}
	cs := kubernetes.NewForConfigOrDie(cfg)
	f := informers.NewSharedInformerFactory(cs, 10*time.Minute)
	svcL = f.Core().V1().Services().Lister()
	epL = f.Core().V1().Endpoints().Lister()
	stop := make(chan struct{})
	f.Start(stop)
	f.WaitForCacheSync(stop)
	dns.HandleFunc(".", handle)
	for _, p := range []string{"udp", "tcp"} {
		s := &dns.Server{Addr: *listen, Net: p}
		go func() { klog.Fatal(s.ListenAndServe()) }()
	}
	klog.Infof("petrel-kubedns serving %s on %s", *domain, *listen)
	select {}
}
