//! One listing over every node, paged with one token.
//!
//! Nodes are listed in name order. The token `n1:<node>:<node's token>`
//! says where the next page starts: at that node, from its own token (empty
//! for its start). A node that left in between is skipped, as the walk
//! resumes at the first node whose name is not below the token's. Without
//! `max_entries` the nodes are asked in parallel, [`FAN_OUT`] at a time,
//! so a large cluster is not asked all at once; with it, a page asks the
//! nodes one after the other, only as many as it needs.

use std::future::Future;

use futures::stream::{self, StreamExt, TryStreamExt};
use tonic::metadata::AsciiMetadataValue;

use crate::{Error, Result};

/// How many nodes an unpaged listing (or a GetCapacity of every node)
/// asks at once.
pub const FAN_OUT: usize = 32;

/// One page of a listing, and the `x-blksnap-lost` entries that came with it.
#[derive(Debug)]
pub struct Page<E> {
    pub entries: Vec<E>,
    pub next_token: String,
    pub lost: Vec<AsciiMetadataValue>,
}

const PREFIX: &str = "n1";

fn token(node: &str, inner: &str) -> String {
    format!("{PREFIX}:{node}:{inner}")
}

/// The node and the node's token a token names.
fn parse(text: &str) -> Result<Option<(String, String)>> {
    if text.is_empty() {
        return Ok(None);
    }
    let mut parts = text.splitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(PREFIX), Some(node), Some(inner))
            if blksnap_node_api::ids::check_node(node).is_ok() =>
        {
            Ok(Some((node.to_owned(), inner.to_owned())))
        }
        _ => Err(Error::BadToken(text.to_owned())),
    }
}

/// Lists across `nodes` (sorted): `page(node, max_entries, node_token)`
/// asks one node for one page.
pub async fn across<E, F, Fut>(
    nodes: &[String],
    max_entries: i32,
    starting_token: &str,
    page: F,
) -> Result<Page<E>>
where
    F: Fn(String, i32, String) -> Fut,
    Fut: Future<Output = Result<Page<E>>>,
{
    let Ok(max) = usize::try_from(max_entries) else {
        return Err(Error::invalid("max_entries", "must not be negative"));
    };
    let start = parse(starting_token)?;
    let rest: Vec<&String> = nodes
        .iter()
        .filter(|n| start.as_ref().is_none_or(|(s, _)| n.as_str() >= s.as_str()))
        .collect();
    let inner_for = |node: &str| match &start {
        Some((s, inner)) if s == node => inner.clone(),
        _ => String::new(),
    };
    let mut out = Page {
        entries: Vec::new(),
        next_token: String::new(),
        lost: Vec::new(),
    };
    if max == 0 {
        // Futures do nothing until polled: `buffered` starts FAN_OUT at a
        // time and yields them in name order, as a paged listing would.
        let asks: Vec<Fut> = rest
            .iter()
            .map(|n| page((*n).clone(), 0, inner_for(n)))
            .collect();
        let mut pages = stream::iter(asks).buffered(FAN_OUT);
        while let Some(p) = pages.try_next().await? {
            out.entries.extend(p.entries);
            out.lost.extend(p.lost);
        }
        return Ok(out);
    }
    for (i, node) in rest.iter().enumerate() {
        let left = max - out.entries.len();
        let p = page((*node).clone(), left as i32, inner_for(node)).await?;
        out.entries.extend(p.entries);
        out.lost.extend(p.lost);
        if !p.next_token.is_empty() {
            out.next_token = token(node, &p.next_token);
            return Ok(out);
        }
        if out.entries.len() >= max {
            if let Some(next) = rest.get(i + 1) {
                out.next_token = token(next, "");
            }
            return Ok(out);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Nodes holding numbered entries, paging like a node: its token is
    /// the index to start at.
    fn fake(
        data: &BTreeMap<String, Vec<u32>>,
    ) -> impl Fn(String, i32, String) -> std::future::Ready<Result<Page<u32>>> + '_ {
        move |node, max, tok| {
            let all = &data[&node];
            let from: usize = if tok.is_empty() {
                0
            } else {
                match tok.parse() {
                    Ok(n) => n,
                    Err(_) => return std::future::ready(Err(Error::BadToken(tok))),
                }
            };
            let to = if max == 0 {
                all.len()
            } else {
                (from + max as usize).min(all.len())
            };
            std::future::ready(Ok(Page {
                entries: all[from..to].to_vec(),
                next_token: if to < all.len() {
                    to.to_string()
                } else {
                    String::new()
                },
                lost: vec![],
            }))
        }
    }

    #[tokio::test]
    async fn pages_span_nodes_and_end_with_every_entry_once() {
        let data: BTreeMap<String, Vec<u32>> = [
            ("a".to_owned(), vec![1, 2, 3]),
            ("b".to_owned(), vec![]),
            ("c".to_owned(), vec![4, 5]),
        ]
        .into();
        let nodes: Vec<String> = data.keys().cloned().collect();
        for max in 1..=6 {
            let mut seen = vec![];
            let mut tok = String::new();
            loop {
                let p = across(&nodes, max, &tok, fake(&data)).await.expect("page");
                assert!(p.entries.len() <= max as usize);
                seen.extend(p.entries);
                if p.next_token.is_empty() {
                    break;
                }
                tok = p.next_token;
            }
            assert_eq!(seen, [1, 2, 3, 4, 5], "max {max}");
        }
        let all = across(&nodes, 0, "", fake(&data)).await.expect("all");
        assert_eq!(all.entries, [1, 2, 3, 4, 5]);
        assert!(all.next_token.is_empty());
    }

    #[tokio::test]
    async fn an_unpaged_listing_asks_nodes_in_parallel_but_at_most_fan_out_at_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let nodes: Vec<String> = (0..100).map(|i| format!("node-{i:03}")).collect();
        let (now, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let page = |node: String, _, _| {
            let (now, most) = (&now, &most);
            async move {
                let at_once = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(at_once, Ordering::SeqCst);
                // Later nodes answer sooner: the order must still hold.
                let n: u64 = node[5..].parse().expect("number");
                tokio::time::sleep(std::time::Duration::from_millis(20 - n / 5)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                Ok(Page {
                    entries: vec![node],
                    next_token: String::new(),
                    lost: vec![],
                })
            }
        };
        let all = across(&nodes, 0, "", page).await.expect("all");
        assert_eq!(all.entries, nodes);
        assert_eq!(most.load(Ordering::SeqCst), FAN_OUT);
    }

    #[tokio::test]
    async fn a_node_gone_between_pages_is_skipped_and_bad_tokens_are_aborted() {
        let data: BTreeMap<String, Vec<u32>> =
            [("a".to_owned(), vec![1]), ("c".to_owned(), vec![4])].into();
        let nodes: Vec<String> = data.keys().cloned().collect();
        let p = across(&nodes, 1, "n1:b:7", fake(&data))
            .await
            .expect("resumes");
        assert_eq!(p.entries, [4]);
        for bad in ["garbage", "n2:a:", "n1:A:", "n1::"] {
            let e = across(&nodes, 1, bad, fake(&data)).await.expect_err(bad);
            assert_eq!(tonic::Status::from(e).code(), tonic::Code::Aborted, "{bad}");
        }
        let e = across(&nodes, -1, "", fake(&data))
            .await
            .expect_err("negative");
        assert_eq!(tonic::Status::from(e).code(), tonic::Code::InvalidArgument);
    }
}
