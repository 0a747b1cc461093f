//! An in-memory stand-in for the Kubernetes API server, served to a real `kube::Client` as a
//! tower service. The tests and the `bench` subcommand drive the controller's reconcile through
//! it (no watch: callers invoke the reconcile functions themselves). It implements what the controllers use, with the apiserver's semantics where
//! they matter for correctness:
//! * merge patches honour a `metadata.resourceVersion` precondition (409 Conflict otherwise);
//! * server-side apply on `/status` replaces the status; `metadata.generation` moves only when
//!   `spec` changes;
//! * DELETE of an object with finalizers only sets `deletionTimestamp`; the object goes away
//!   when the last finalizer is removed;
//! * Events are recorded for assertions.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

type Key = (String, String, String); // plural, namespace, name

#[derive(Default)]
struct Store {
    /// Objects as compact JSON (a `Value` tree costs several times more memory; the bench
    /// holds thousands of objects).
    objects: BTreeMap<Key, Box<[u8]>>,
    namespaces: BTreeMap<String, Value>,
    rv: u64,
    /// `(type, reason, note)` of every Event.
    events: Vec<(String, String, String)>,
    event_count: usize,
    /// `METHOD path` of every request that changed something.
    writes: Vec<String>,
    /// Fail N writes to a path suffix with a status after letting `skip` of them through
    /// (e.g. simulate a crash at one step): (suffix, status, count, skip).
    fail_next: Option<(String, u16, u32, u32)>,
    /// Keep no write log and no Events (the bench: their memory is not the operator's).
    lean: bool,
}

#[derive(Clone, Default)]
pub struct MemoryKube {
    store: Arc<Mutex<Store>>,
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "reason": reason, "message": message, "code": code})
}

fn load(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("stored objects are JSON")
}

fn save(value: &Value) -> Box<[u8]> {
    serde_json::to_vec(value)
        .expect("values serialize")
        .into_boxed_slice()
}

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

impl MemoryKube {
    pub fn new() -> Self {
        Self::default()
    }

    /// A fake that keeps no write log and no Event list ([`MemoryKube::writes`] and
    /// [`MemoryKube::events`] stay empty; [`MemoryKube::event_count`] still counts).
    pub fn lean() -> Self {
        let kube = Self::default();
        kube.store.lock().unwrap().lean = true;
        kube
    }

    /// Events recorded so far (also in lean mode).
    pub fn event_count(&self) -> usize {
        self.store.lock().unwrap().event_count
    }

    /// A kube client talking to this fake.
    pub fn client(&self) -> kube::Client {
        let this = self.clone();
        let service = tower::service_fn(move |req: Request<kube::client::Body>| {
            let this = this.clone();
            async move {
                let (parts, body) = req.into_parts();
                let bytes = body
                    .collect()
                    .await
                    .map(|c| c.to_bytes())
                    .unwrap_or_default();
                let (status, value) = this.handle(&parts, &bytes);
                let resp = Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(serde_json::to_vec(&value).unwrap())))
                    .unwrap();
                Ok::<_, Infallible>(resp)
            }
        });
        kube::Client::new(service, "default")
    }

    pub fn add_namespace(&self, name: &str, annotations: &[(&str, &str)]) {
        let ann: serde_json::Map<String, Value> = annotations
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect();
        self.store.lock().unwrap().namespaces.insert(
            name.to_owned(),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "annotations": ann}}),
        );
    }

    /// Creates or updates an object as `kubectl apply` would (spec changes bump generation).
    pub fn apply<K: Serialize + kube::Resource<DynamicType = ()>>(&self, obj: &K) {
        let plural = K::plural(&()).to_string();
        let mut value = serde_json::to_value(obj).unwrap();
        let ns = value["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        let name = value["metadata"]["name"].as_str().unwrap().to_owned();
        let mut store = self.store.lock().unwrap();
        store.rv += 1;
        let rv = store.rv.to_string();
        let key = (plural, ns, name.clone());
        match store.objects.get(&key).map(|b| load(b)) {
            Some(mut existing) => {
                if existing["spec"] != value["spec"] {
                    let g = existing["metadata"]["generation"].as_i64().unwrap_or(1);
                    existing["metadata"]["generation"] = json!(g + 1);
                }
                existing["spec"] = value["spec"].take();
                if let Some(ann) = value["metadata"].get("annotations") {
                    existing["metadata"]["annotations"] = ann.clone();
                }
                existing["metadata"]["resourceVersion"] = json!(rv);
                store.objects.insert(key, save(&existing));
            }
            None => {
                value["metadata"]["generation"] = json!(1);
                value["metadata"]["resourceVersion"] = json!(rv);
                value["metadata"]["uid"] = json!(uuid::Uuid::new_v4().to_string());
                value["metadata"]["creationTimestamp"] = json!("2026-11-21T10:00:00Z");
                store.objects.insert(key, save(&value));
            }
        }
    }

    /// Replaces the object wholesale (for tests that edit metadata or status by hand).
    pub fn replace_raw(&self, plural: &str, ns: &str, name: &str, f: impl FnOnce(&mut Value)) {
        let mut store = self.store.lock().unwrap();
        store.rv += 1;
        let rv = store.rv.to_string();
        let key: Key = (plural.into(), ns.into(), name.into());
        let mut obj = load(store.objects.get(&key).expect("object exists"));
        f(&mut obj);
        obj["metadata"]["resourceVersion"] = json!(rv);
        store.objects.insert(key, save(&obj));
    }

    pub fn get<K: DeserializeOwned + kube::Resource<DynamicType = ()>>(
        &self,
        ns: &str,
        name: &str,
    ) -> Option<K> {
        let key = (K::plural(&()).to_string(), ns.to_owned(), name.to_owned());
        let store = self.store.lock().unwrap();
        store
            .objects
            .get(&key)
            .map(|b| serde_json::from_slice(b).unwrap())
    }

    /// `kubectl delete`: sets deletionTimestamp while finalizers remain.
    pub fn delete<K: kube::Resource<DynamicType = ()>>(&self, ns: &str, name: &str) {
        let key = (K::plural(&()).to_string(), ns.to_owned(), name.to_owned());
        let mut store = self.store.lock().unwrap();
        Self::delete_key(&mut store, &key);
    }

    fn delete_key(store: &mut Store, key: &Key) {
        store.rv += 1;
        let rv = store.rv.to_string();
        let Some(mut obj) = store.objects.get(key).map(|b| load(b)) else {
            return;
        };
        let has_finalizers = obj["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if has_finalizers {
            obj["metadata"]["deletionTimestamp"] = json!("2026-11-21T12:00:00Z");
            let g = obj["metadata"]["generation"].as_i64().unwrap_or(1);
            obj["metadata"]["generation"] = json!(g + 1);
            obj["metadata"]["resourceVersion"] = json!(rv);
            store.objects.insert(key.clone(), save(&obj));
        } else {
            store.objects.remove(key);
        }
    }

    /// `(type, reason, note)` of every Event recorded.
    pub fn events(&self) -> Vec<(String, String, String)> {
        self.store.lock().unwrap().events.clone()
    }

    pub fn event_reasons(&self) -> Vec<String> {
        self.events().into_iter().map(|e| e.1).collect()
    }

    pub fn writes(&self) -> Vec<String> {
        self.store.lock().unwrap().writes.clone()
    }

    /// The next `count` writes whose path ends with `suffix` fail with `code`.
    pub fn fail_writes(&self, suffix: &str, code: u16, count: u32) {
        self.fail_writes_after(suffix, 0, code, count);
    }

    /// Lets `skip` writes whose path ends with `suffix` through, then fails the next `count`
    /// with `code`.
    pub fn fail_writes_after(&self, suffix: &str, skip: u32, code: u16, count: u32) {
        self.store.lock().unwrap().fail_next = Some((suffix.to_owned(), code, count, skip));
    }

    fn handle(&self, parts: &http::request::Parts, body: &[u8]) -> (StatusCode, Value) {
        let path = parts.uri.path().to_owned();
        let method = parts.method.as_str().to_owned();
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        let mut store = self.store.lock().unwrap();
        if method != "GET" {
            if !store.lean {
                store.writes.push(format!("{method} {path}"));
            }
            if let Some((suffix, code, count, skip)) = store.fail_next.clone()
                && path.ends_with(&suffix)
            {
                if skip > 0 {
                    store.fail_next = Some((suffix, code, count, skip - 1));
                } else {
                    store.fail_next = (count > 1).then(|| (suffix.clone(), code, count - 1, 0));
                    return (
                        StatusCode::from_u16(code).unwrap(),
                        status_body(code, "InternalError", "injected failure"),
                    );
                }
            }
        }
        let content_type = parts
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let patch: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        match segs.as_slice() {
            ["api", "v1", "namespaces", ns] if method == "GET" => match store.namespaces.get(*ns) {
                Some(n) => (StatusCode::OK, n.clone()),
                None => (
                    StatusCode::NOT_FOUND,
                    status_body(404, "NotFound", &format!("namespaces \"{ns}\" not found")),
                ),
            },
            ["apis", "events.k8s.io", "v1", "namespaces", _ns, "events"] if method == "POST" => {
                let mut ev = patch.clone();
                if ev["metadata"]["name"].is_null() {
                    ev["metadata"]["name"] = json!(format!("ev-{}", store.event_count));
                }
                store.event_count += 1;
                let text = |k: &str| ev[k].as_str().unwrap_or("").to_owned();
                let record = (text("type"), text("reason"), text("note"));
                if !store.lean {
                    store.events.push(record);
                }
                (StatusCode::CREATED, ev)
            }
            [
                "apis",
                "events.k8s.io",
                "v1",
                "namespaces",
                _ns,
                "events",
                _name,
            ] => (StatusCode::OK, patch),
            ["apis", _g, _v, plural] if method == "GET" => {
                let items: Vec<Value> = store
                    .objects
                    .iter()
                    .filter(|((p, _, _), _)| p == plural)
                    .map(|(_, b)| load(b))
                    .collect();
                let rv = store.rv.to_string();
                (
                    StatusCode::OK,
                    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": rv}, "items": items}),
                )
            }
            ["apis", g, v, first, rest_all @ ..]
                if *first != "namespaces" || rest_all.len() >= 3 =>
            {
                let (ns, plural, name, rest): (&str, &str, &str, &[&str]) =
                    if *first == "namespaces" {
                        (rest_all[0], rest_all[1], rest_all[2], &rest_all[3..])
                    } else {
                        ("", first, rest_all[0], &rest_all[1..])
                    };
                let _ = (g, v);
                let key: Key = (plural.into(), ns.into(), name.into());
                let status_only = rest == ["status"];
                match method.as_str() {
                    "GET" => match store.objects.get(&key) {
                        Some(o) => (StatusCode::OK, load(o)),
                        None => (
                            StatusCode::NOT_FOUND,
                            status_body(404, "NotFound", "not found"),
                        ),
                    },
                    "DELETE" => {
                        Self::delete_key(&mut store, &key);
                        (StatusCode::OK, status_body(200, "", "deleted"))
                    }
                    "PATCH" => {
                        store.rv += 1;
                        let rv = store.rv.to_string();
                        let Some(mut stored) = store.objects.get(&key).map(|b| load(b)) else {
                            return (
                                StatusCode::NOT_FOUND,
                                status_body(404, "NotFound", "not found"),
                            );
                        };
                        let obj = &mut stored;
                        if content_type.starts_with("application/apply-patch") {
                            // Like the API server: a resourceVersion in the applied object is a
                            // precondition.
                            if let Some(want) = patch["metadata"].get("resourceVersion")
                                && !want.is_null()
                                && *want != obj["metadata"]["resourceVersion"]
                            {
                                return (
                                    StatusCode::CONFLICT,
                                    status_body(409, "Conflict", "the object has been modified"),
                                );
                            }
                            if status_only {
                                obj["status"] = patch["status"].clone();
                            } else {
                                merge(obj, &patch);
                            }
                        } else if content_type.starts_with("application/merge-patch") {
                            let mut patch = patch.clone();
                            if let Some(want) = patch["metadata"].get("resourceVersion").cloned() {
                                if want != obj["metadata"]["resourceVersion"] {
                                    return (
                                        StatusCode::CONFLICT,
                                        status_body(
                                            409,
                                            "Conflict",
                                            "the object has been modified",
                                        ),
                                    );
                                }
                                patch["metadata"]
                                    .as_object_mut()
                                    .unwrap()
                                    .remove("resourceVersion");
                            }
                            let old_spec = obj["spec"].clone();
                            if status_only {
                                merge(&mut obj["status"], &patch["status"]);
                            } else {
                                merge(obj, &patch);
                            }
                            if obj["spec"] != old_spec {
                                let g = obj["metadata"]["generation"].as_i64().unwrap_or(1);
                                obj["metadata"]["generation"] = json!(g + 1);
                            }
                        } else {
                            return (
                                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                                status_body(415, "UnsupportedMediaType", &content_type),
                            );
                        }
                        obj["metadata"]["resourceVersion"] = json!(rv);
                        let result = obj.clone();
                        let deleting = !result["metadata"]["deletionTimestamp"].is_null();
                        let no_finalizers = result["metadata"]["finalizers"]
                            .as_array()
                            .is_none_or(|f| f.is_empty());
                        if deleting && no_finalizers {
                            store.objects.remove(&key);
                        } else {
                            store.objects.insert(key, save(&result));
                        }
                        (StatusCode::OK, result)
                    }
                    _ => (
                        StatusCode::METHOD_NOT_ALLOWED,
                        status_body(405, "MethodNotAllowed", &method),
                    ),
                }
            }
            _ => (
                StatusCode::NOT_FOUND,
                status_body(404, "NotFound", &format!("no route {method} {path}")),
            ),
        }
    }
}
