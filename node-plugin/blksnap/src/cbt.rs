//! Change maps to changed byte ranges, without the kernel.
//!
//! A change map holds one byte per tracking block; a byte greater than `N`
//! marks a block written since snapshot number `N` was taken. A backup
//! tool wants the opposite view: which byte ranges of the device to copy.
//! Adjacent changed blocks are coalesced so that a consumer issues as few,
//! as large reads as possible, and the last block is clipped to the
//! device's capacity because the capacity need not be a multiple of the
//! block size.

use std::ops::Range;

use crate::CbtInfo;

/// Ranges of block indices whose byte in `map` is greater than `since`,
/// sorted and coalesced.
pub fn changed_blocks(map: &[u8], since: u8) -> Vec<Range<u64>> {
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    for (i, &b) in map.iter().enumerate() {
        match (b > since, start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                out.push(s as u64..i as u64);
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push(s as u64..map.len() as u64);
    }
    out
}

/// Byte ranges of the device whose tracking blocks changed since snapshot
/// `since`: sorted, non-overlapping, never adjacent, and within
/// `0..capacity`. A `block_size` of 0 (no valid map) yields no ranges.
pub fn changed_ranges(map: &[u8], block_size: u32, capacity: u64, since: u8) -> Vec<Range<u64>> {
    if block_size == 0 {
        return Vec::new();
    }
    let bs = u64::from(block_size);
    changed_blocks(map, since)
        .into_iter()
        .filter_map(|r| {
            let start = r.start.saturating_mul(bs);
            let end = r.end.saturating_mul(bs).min(capacity);
            (start < end).then_some(start..end)
        })
        .collect()
}

/// [`changed_ranges`] with the geometry of a device's [`CbtInfo`].
pub fn changed_ranges_for(info: &CbtInfo, map: &[u8], since: u8) -> Vec<Range<u64>> {
    changed_ranges(map, info.block_size, info.device_capacity, since)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn empty_and_unchanged_maps_give_nothing() {
        assert!(changed_ranges(&[], 4096, 0, 0).is_empty());
        assert!(changed_ranges(&[0, 1, 2], 4096, 3 * 4096, 2).is_empty());
    }

    #[test]
    fn adjacent_blocks_coalesce() {
        // Blocks 1, 2 and 4 changed since snapshot 1.
        let map = [1, 2, 3, 0, 5, 1];
        assert_eq!(changed_blocks(&map, 1), vec![1..3, 4..5]);
        assert_eq!(
            changed_ranges(&map, 512, 6 * 512, 1),
            vec![512..1536, 2048..2560]
        );
    }

    #[test]
    fn threshold_is_strictly_greater() {
        let map = [3, 4, 3];
        assert_eq!(changed_blocks(&map, 3), vec![1..2]);
        assert_eq!(changed_blocks(&map, 2), vec![0..3]);
        assert!(changed_blocks(&map, 255).is_empty());
    }

    #[test]
    fn last_block_is_clipped_to_capacity() {
        let map = [0, 9, 9];
        // The third block holds only 100 bytes of the device.
        assert_eq!(
            changed_ranges(&map, 65536, 2 * 65536 + 100, 0),
            vec![65536..131172]
        );
        // Blocks wholly past the capacity vanish.
        assert_eq!(changed_ranges(&[9, 9, 9], 4096, 4096, 0), vec![0..4096]);
    }

    #[test]
    fn run_to_the_end_of_the_map_is_closed() {
        assert_eq!(changed_blocks(&[0, 0, 1, 1], 0), vec![2..4]);
    }

    #[test]
    fn zero_block_size_yields_nothing() {
        assert!(changed_ranges(&[5, 5], 0, 1 << 20, 0).is_empty());
    }

    fn geometry() -> impl Strategy<Value = (Vec<u8>, u32, u64, u8)> {
        (
            prop::collection::vec(
                prop_oneof![Just(0u8), Just(1), Just(2), any::<u8>()],
                0..200,
            ),
            9u32..17,
            any::<u8>(),
        )
            .prop_flat_map(|(map, shift, since)| {
                let bs = 1u32 << shift;
                let full = map.len() as u64 * u64::from(bs);
                // Capacity anywhere from a whole block short to exact (and
                // sometimes far shorter, as a map with stale tail blocks).
                let lo = full.saturating_sub(u64::from(bs) * 3);
                (Just(map), Just(bs), lo..=full, Just(since))
            })
    }

    proptest! {
        #[test]
        fn ranges_cover_exactly_the_changed_blocks((map, bs, cap, since) in geometry()) {
            let ranges = changed_ranges(&map, bs, cap, since);
            let bs64 = u64::from(bs);

            for r in &ranges {
                prop_assert!(r.start < r.end, "empty range {:?}", r);
                prop_assert!(r.end <= cap, "range {:?} past capacity {}", r, cap);
                prop_assert_eq!(r.start % bs64, 0);
                prop_assert!(r.end % bs64 == 0 || r.end == cap);
            }
            for w in ranges.windows(2) {
                // Sorted, disjoint and not touching: touching ones must
                // have been merged.
                prop_assert!(w[0].end < w[1].start, "{:?} then {:?}", w[0], w[1]);
            }

            let covered = |byte: u64| ranges.iter().any(|r| r.contains(&byte));
            let mut expected_len = 0u64;
            for (i, &b) in map.iter().enumerate() {
                let start = i as u64 * bs64;
                if start >= cap {
                    break;
                }
                let end = (start + bs64).min(cap);
                let changed = b > since;
                prop_assert_eq!(covered(start), changed, "block {} first byte", i);
                prop_assert_eq!(covered(end - 1), changed, "block {} last byte", i);
                if changed {
                    expected_len += end - start;
                }
            }
            let total: u64 = ranges.iter().map(|r| r.end - r.start).sum();
            prop_assert_eq!(total, expected_len);
        }
    }
}
