//! The desired state kept up to date change by change: each sync finds which Services and
//! EndpointSlices are new or gone (a pointer comparison per object: the watch caches hand out
//! the same `Arc` for an object that did not change), computes again the parts of the services
//! they belong to, and re-decides only the frontends those parts had or have. What it gives is
//! what `desired::compute` gives over the same inputs (the tests and the proptest in `sync`
//! hold it to that), and it says which frontends changed, so the apply can write those alone.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use petrel_datapath::Frontend;

use crate::desired::{
    Age, Desired, NodeFacts, Options, age, key, owner, service_id, service_part, sort_slices,
};

/// What one `update` changed.
#[derive(Debug, Default)]
pub struct Changes {
    /// Every frontend whose plan may differ from the last call's (added, changed or gone).
    pub frontends: BTreeSet<Frontend>,
    /// Everything was computed again (the first call, or the node facts or options changed).
    pub all: bool,
    /// EndpointSlices not seen before: new objects, or new versions of known ones (a relist's
    /// copy of a version already seen is not fresh).
    pub fresh_slices: Vec<Arc<EndpointSlice>>,
}

#[derive(Default)]
pub struct Memo {
    context: Option<(NodeFacts, bool)>,
    /// Parts by service id ("namespace/name").
    services: HashMap<String, Remembered>,
    /// The Services of the last call, by address of their `Arc` (kept alive by `services`, so
    /// an address is never reused for another object while it is here).
    service_ptrs: HashMap<usize, Held<Service>>,
    slice_ptrs: HashMap<usize, Held<EndpointSlice>>,
    /// Slices by the id of the service they name.
    slices_of: HashMap<String, Vec<Arc<EndpointSlice>>>,
    /// Who asks for each frontend, oldest first: the first keeps it.
    claims: HashMap<Frontend, BTreeSet<Age>>,
    /// (keeper, refused) of each frontend two services ask for; each logged once, when it
    /// appears.
    conflicts: BTreeMap<Frontend, Vec<(String, String)>>,
    desired: Desired,
    /// Marks the objects seen in the current call.
    generation: u64,
}

struct Remembered {
    age: Age,
    part: Desired,
}

struct Held<T> {
    obj: Arc<T>,
    /// The service id it is (a Service) or it belongs to (a slice, None: no service label).
    id: Option<String>,
    generation: u64,
}

/// Same object, same version: the API server's uid and resourceVersion (a relist hands out new
/// copies of unchanged objects).
fn same_version(
    a: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    b: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> bool {
    a.uid.is_some()
        && a.resource_version.is_some()
        && a.uid == b.uid
        && a.resource_version == b.resource_version
}

impl Memo {
    /// The desired state as of the last `update`.
    pub fn desired(&self) -> &Desired {
        &self.desired
    }

    /// Services remembered.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// `update`, and a copy of the result.
    pub fn compute(
        &mut self,
        services: &[Arc<Service>],
        slices: &[Arc<EndpointSlice>],
        node: &NodeFacts,
        opts: Options,
    ) -> Desired {
        self.update(services, slices, node, opts);
        self.desired.clone()
    }

    /// Brings the desired state in line with `services` and `slices` (the whole of the
    /// caches), computing again only the services whose objects changed.
    pub fn update(
        &mut self,
        services: &[Arc<Service>],
        slices: &[Arc<EndpointSlice>],
        node: &NodeFacts,
        opts: Options,
    ) -> Changes {
        let mut changes = Changes::default();
        let context = (node.clone(), opts.maglev);
        if self.context.as_ref() != Some(&context) {
            self.context = Some(context);
            changes.all = true;
        }
        self.generation += 1;
        let generation = self.generation;
        let mut dirty: BTreeSet<String> = BTreeSet::new();

        // Slices: new pointers are new objects or versions, pointers not seen again are gone.
        let mut added = Vec::new();
        for s in slices {
            match self.slice_ptrs.get_mut(&(Arc::as_ptr(s) as usize)) {
                Some(h) => h.generation = generation,
                None => added.push(s),
            }
        }
        let mut gone_versions = HashMap::new();
        let slices_of = &mut self.slices_of;
        self.slice_ptrs.retain(|ptr, h| {
            if h.generation == generation {
                return true;
            }
            if let Some(id) = &h.id {
                if let Some(v) = slices_of.get_mut(id) {
                    v.retain(|s| Arc::as_ptr(s) as usize != *ptr);
                    if v.is_empty() {
                        slices_of.remove(id);
                    }
                }
                dirty.insert(id.clone());
            }
            let m = &h.obj.metadata;
            gone_versions.insert((m.namespace.clone(), m.name.clone()), h.obj.clone());
            false
        });
        for s in added {
            let m = &s.metadata;
            let again = gone_versions
                .get(&(m.namespace.clone(), m.name.clone()))
                .is_some_and(|old| same_version(&old.metadata, m));
            if !again {
                changes.fresh_slices.push(s.clone());
            }
            let id = owner(s).map(|(ns, name)| key(ns, name));
            if let Some(id) = &id {
                self.slices_of
                    .entry(id.clone())
                    .or_default()
                    .push(s.clone());
                dirty.insert(id.clone());
            }
            let held = Held {
                obj: s.clone(),
                id,
                generation,
            };
            self.slice_ptrs.insert(Arc::as_ptr(s) as usize, held);
        }

        // Services, the same way.
        let mut current: HashMap<String, Arc<Service>> = HashMap::new();
        for s in services {
            match self.service_ptrs.get_mut(&(Arc::as_ptr(s) as usize)) {
                Some(h) => h.generation = generation,
                None => {
                    let id = service_id(s);
                    dirty.insert(id.clone());
                    current.insert(id.clone(), s.clone());
                    let held = Held {
                        obj: s.clone(),
                        id: Some(id),
                        generation,
                    };
                    self.service_ptrs.insert(Arc::as_ptr(s) as usize, held);
                }
            }
        }
        self.service_ptrs.retain(|_, h| {
            let keep = h.generation == generation;
            if !keep && let Some(id) = &h.id {
                dirty.insert(id.clone());
            }
            keep
        });
        if changes.all {
            dirty.extend(self.services.keys().cloned());
            dirty.extend(self.service_ptrs.values().filter_map(|h| h.id.clone()));
        }
        // The Service object of each dirty id, if it is still there.
        for h in self.service_ptrs.values() {
            if let Some(id) = &h.id
                && dirty.contains(id)
            {
                current.entry(id.clone()).or_insert_with(|| h.obj.clone());
            }
        }

        let mut skipped_changed = false;
        for id in &dirty {
            let old = self.services.remove(id);
            let new = current.get(id).map(|svc| {
                let mut own: Vec<&EndpointSlice> = self
                    .slices_of
                    .get(id)
                    .into_iter()
                    .flatten()
                    .map(AsRef::as_ref)
                    .collect();
                sort_slices(&mut own);
                Remembered {
                    age: age(svc),
                    part: service_part(svc, &own, node, opts),
                }
            });
            for r in old.iter() {
                for fe in r.part.frontends.keys() {
                    if let Some(c) = self.claims.get_mut(fe) {
                        c.remove(&r.age);
                    }
                    changes.frontends.insert(*fe);
                }
                for svc in r.part.health_checks.keys() {
                    self.desired.health_checks.remove(svc);
                }
                skipped_changed |= !r.part.skipped.is_empty()
                    || !r.part.unsupported.is_empty()
                    || !r.part.topology_fallbacks.is_empty();
            }
            if let Some(r) = new {
                for fe in r.part.frontends.keys() {
                    self.claims.entry(*fe).or_default().insert(r.age.clone());
                    changes.frontends.insert(*fe);
                }
                self.desired
                    .health_checks
                    .extend(r.part.health_checks.iter().map(|(s, h)| (s.clone(), *h)));
                skipped_changed |= !r.part.skipped.is_empty()
                    || !r.part.unsupported.is_empty()
                    || !r.part.topology_fallbacks.is_empty();
                self.services.insert(id.clone(), r);
            }
        }
        if skipped_changed {
            // Each list gathered again from every service's part, sorted as `assemble` sorts.
            let parts: Vec<&Desired> = self.services.values().map(|r| &r.part).collect();
            self.desired.skipped = gathered(&parts, |p| &p.skipped);
            self.desired.unsupported = gathered(&parts, |p| &p.unsupported);
            self.desired.topology_fallbacks = gathered(&parts, |p| &p.topology_fallbacks);
        }
        self.decide(&changes.frontends);
        changes
    }

    /// Who gets each frontend of `touched`, from the claims.
    fn decide(&mut self, touched: &BTreeSet<Frontend>) {
        let mut conflicts_changed = false;
        for fe in touched {
            let claimants = self.claims.get(fe).filter(|c| !c.is_empty());
            let Some(claimants) = claimants else {
                self.claims.remove(fe);
                self.desired.frontends.remove(fe);
                conflicts_changed |= self.conflicts.remove(fe).is_some();
                continue;
            };
            let mut order = claimants.iter();
            let keeper = &order.next().expect("not empty").2;
            let plan = self.services[keeper].part.frontends[fe].clone();
            self.desired.frontends.insert(*fe, plan);
            let now: Vec<(String, String)> = order.map(|a| (keeper.clone(), a.2.clone())).collect();
            let before = self.conflicts.get(fe).cloned().unwrap_or_default();
            if now != before {
                conflicts_changed = true;
                for (keeps, refused) in now.iter().filter(|c| !before.contains(c)) {
                    tracing::warn!(
                        frontend = %fe,
                        keeps = %keeps,
                        refused = %refused,
                        "two services ask for one frontend: the older keeps it, as the API server's allocator would"
                    );
                }
                if now.is_empty() {
                    self.conflicts.remove(fe);
                } else {
                    self.conflicts.insert(*fe, now);
                }
            }
        }
        if conflicts_changed {
            let mut all: Vec<(Frontend, String, String)> = self
                .conflicts
                .iter()
                .flat_map(|(fe, c)| c.iter().map(|(k, r)| (*fe, k.clone(), r.clone())))
                .collect();
            all.sort();
            self.desired.conflicts = all;
        }
    }
}

/// One list of every part's `list`, sorted.
fn gathered<T: Clone + Ord>(parts: &[&Desired], list: impl Fn(&Desired) -> &Vec<T>) -> Vec<T> {
    let mut all: Vec<T> = parts.iter().flat_map(|p| list(p).iter().cloned()).collect();
    all.sort();
    all
}
