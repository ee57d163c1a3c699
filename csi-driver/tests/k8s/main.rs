//! The controller against a real kube-apiserver (and the real
//! snapshot-controller where a test says so): the test bed's control plane
//! from tests/k8s. `csi-driver/tests/run-k8s` starts one, runs these and
//! stops it; without `BLKSNAP_K8S_KUBECONFIG` (or `KUBECONFIG`) every test
//! prints `skipped: <why>`.

mod binary;
mod discovery;
mod group;
mod leader;
mod lost;
#[path = "../node_api/mod.rs"]
mod node_api;
mod nodes;
mod orphans;
mod support;
