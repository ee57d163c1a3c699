//! Which nodes a new volume may be made on, in the order to try them.
//!
//! A retried CreateVolume (after a timeout or a controller restart) must
//! never make a second volume on another node. The order is therefore a
//! pure function of the request and the known nodes: the preferred
//! topologies in their order (the selected node first under
//! WaitForFirstConsumer), then the other nodes the requisite allows, or
//! every node, ranked by a rendezvous hash of the volume's name. The
//! controller asks each node in that order to create the volume and moves
//! on only when the node answers RESOURCE_EXHAUSTED: a node's CreateVolume
//! finds an existing volume of that name before it looks for room, so
//! whatever a first attempt made is found again by the retry. Free space
//! (GetCapacity) does not decide the order: the node that holds the
//! volume reports less room after the first attempt than before it.
//!
//! A volume from a snapshot or a clone is made on its source's node.

use std::collections::HashSet;

use blksnap_node_api::TOPOLOGY_KEY;
use csi_proto::csi::v1 as csi;

use crate::{Error, Result};

/// Whether topology `t` allows node `node`: a segment without our key
/// says nothing about nodes.
fn allows(t: &csi::Topology, node: &str) -> bool {
    t.segments.get(TOPOLOGY_KEY).is_none_or(|n| n == node)
}

/// FNV-1a, 64 bits: stable across builds and releases, unlike std's
/// hasher, so an upgraded controller ranks nodes as the old one did.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// `nodes` ranked for the volume `name` (highest rendezvous score first).
fn ranked<'a>(name: &str, nodes: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    let mut scored: Vec<(u64, &String)> = nodes
        .into_iter()
        .map(|n| (fnv1a(&[name.as_bytes(), n.as_bytes()]), n))
        .collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    scored.into_iter().map(|(_, n)| n.clone()).collect()
}

/// The nodes to try for CreateVolume `name`, in order.
pub fn candidates(
    name: &str,
    source_node: Option<&str>,
    requirements: Option<&csi::TopologyRequirement>,
    known: &[String],
) -> Result<Vec<String>> {
    let requisite = requirements.map_or(&[][..], |r| &r.requisite[..]);
    let preferred = requirements.map_or(&[][..], |r| &r.preferred[..]);
    let allowed = |node: &str| requisite.is_empty() || requisite.iter().any(|t| allows(t, node));

    if let Some(node) = source_node {
        if !allowed(node) {
            return Err(Error::Exhausted(format!(
                "the source is on node {node}, which no requisite topology allows: a volume \
                 from a snapshot or a clone can only be made on its source's node"
            )));
        }
        return Ok(vec![node.to_owned()]);
    }

    let all = ranked(name, known);
    let mut order: Vec<String> = Vec::new();
    let mut seen = HashSet::new();
    let mut push = |node: &str, order: &mut Vec<String>| {
        if allowed(node) && seen.insert(node.to_owned()) {
            order.push(node.to_owned());
        }
    };
    for t in preferred {
        match t.segments.get(TOPOLOGY_KEY) {
            Some(node) => push(node, &mut order),
            None => all.iter().for_each(|n| push(n, &mut order)),
        }
    }
    // The requisite's own nodes, possibly not (yet) known: asking one is
    // UNAVAILABLE, never a silent skip to the next.
    let named: Vec<String> = requisite
        .iter()
        .filter_map(|t| t.segments.get(TOPOLOGY_KEY).cloned())
        .collect();
    let any_node = requisite.is_empty()
        || requisite
            .iter()
            .any(|t| !t.segments.contains_key(TOPOLOGY_KEY));
    let rest = if any_node {
        all.clone()
    } else {
        ranked(name, named.iter())
    };
    for n in &rest {
        push(n, &mut order);
    }
    if order.is_empty() {
        return Err(if known.is_empty() {
            Error::NoNodes
        } else {
            Error::Exhausted("no known node is in the requisite topology".to_owned())
        });
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn on(node: &str) -> csi::Topology {
        csi::Topology {
            segments: HashMap::from([(TOPOLOGY_KEY.to_owned(), node.to_owned())]),
        }
    }

    fn nodes(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("worker-{i}")).collect()
    }

    #[test]
    fn without_requirements_every_node_in_an_order_fixed_by_the_name() {
        let known = nodes(5);
        let a = candidates("pvc-1", None, None, &known).expect("order");
        assert_eq!(a.len(), 5);
        // The same request gives the same order, however the nodes are listed.
        let mut shuffled = known.clone();
        shuffled.reverse();
        assert_eq!(
            candidates("pvc-1", None, None, &shuffled).expect("order"),
            a
        );
        // Names spread over the nodes.
        let firsts: HashSet<String> = (0..50)
            .map(|i| candidates(&format!("pvc-{i}"), None, None, &known).expect("o")[0].clone())
            .collect();
        assert!(firsts.len() >= 4, "{firsts:?}");
        // A node that joins keeps the others' relative order.
        let mut more = known.clone();
        more.push("worker-9".into());
        let b: Vec<String> = candidates("pvc-1", None, None, &more)
            .expect("order")
            .into_iter()
            .filter(|n| n != "worker-9")
            .collect();
        assert_eq!(b, a);
    }

    #[test]
    fn preferred_first_then_the_requisite_only() {
        let known = nodes(4);
        let req = csi::TopologyRequirement {
            requisite: vec![on("worker-1"), on("worker-2"), on("worker-3")],
            preferred: vec![on("worker-2")],
        };
        let order = candidates("pvc-1", None, Some(&req), &known).expect("order");
        assert_eq!(order[0], "worker-2");
        let mut rest = order[1..].to_vec();
        rest.sort();
        assert_eq!(rest, ["worker-1", "worker-3"]);
    }

    #[test]
    fn a_source_decides_the_node_and_a_requisite_without_it_is_refused() {
        let known = nodes(3);
        assert_eq!(
            candidates("pvc-1", Some("worker-2"), None, &known).expect("order"),
            ["worker-2"]
        );
        let req = csi::TopologyRequirement {
            requisite: vec![on("worker-0")],
            preferred: vec![],
        };
        let e = candidates("pvc-1", Some("worker-2"), Some(&req), &known).expect_err("refused");
        assert_eq!(
            tonic::Status::from(e).code(),
            tonic::Code::ResourceExhausted
        );
    }

    #[test]
    fn no_nodes_is_unavailable() {
        let e = candidates("pvc-1", None, None, &[]).expect_err("none");
        assert_eq!(tonic::Status::from(e).code(), tonic::Code::Unavailable);
    }
}
