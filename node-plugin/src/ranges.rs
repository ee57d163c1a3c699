//! Byte ranges of a volume: coalescing, clipping to a starting offset, and
//! the compact form in which frozen change maps are kept on disk.
//!
//! Ranges are half-open `start..end` byte ranges. The SnapshotMetadata
//! service answers with VARIABLE_LENGTH tuples, so every list this module
//! returns is sorted, non-overlapping and has adjacent ranges merged.

use std::ops::Range;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// Sorts `ranges`, drops empty ones and merges those that overlap or touch.
pub fn coalesce(mut ranges: Vec<Range<u64>>) -> Vec<Range<u64>> {
    ranges.retain(|r| r.start < r.end);
    ranges.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// Byte ranges of the tracking blocks whose byte in `map` equals `value`,
/// coalesced and clipped to `capacity`.
pub fn blocks_equal(map: &[u8], value: u8, block_size: u32, capacity: u64) -> Vec<Range<u64>> {
    let bs = u64::from(block_size);
    if bs == 0 {
        return Vec::new();
    }
    let mut out: Vec<Range<u64>> = Vec::new();
    for (i, &b) in map.iter().enumerate() {
        if b != value {
            continue;
        }
        let start = i as u64 * bs;
        let end = (start + bs).min(capacity);
        if start >= end {
            break;
        }
        match out.last_mut() {
            Some(last) if last.end == start => last.end = end,
            _ => out.push(start..end),
        }
    }
    out
}

/// The part of `ranges` (coalesced) at or after `from`, which is first
/// rounded down to a multiple of `granule` (the plugin may round
/// `starting_offset` down to its block).
pub fn from_offset(ranges: &[Range<u64>], from: u64, granule: u64) -> Vec<Range<u64>> {
    let from = if granule > 0 {
        from - from % granule
    } else {
        from
    };
    ranges
        .iter()
        .filter(|r| r.end > from)
        .map(|r| r.start.max(from)..r.end)
        .collect()
}

/// Encodes a change map as base64 of its runs: for each run, the byte
/// value and the run length as a LEB128 varint. Maps are long runs of a
/// few values, so this is small.
pub fn encode_map(map: &[u8]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while i < map.len() {
        let value = map[i];
        let mut j = i;
        while j < map.len() && map[j] == value {
            j += 1;
        }
        out.push(value);
        let mut n = (j - i) as u64;
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                break;
            }
            out.push(byte | 0x80);
        }
        i = j;
    }
    STANDARD.encode(out)
}

/// Decodes [`encode_map`]; `None` for anything it did not produce or
/// for a map longer than `max_len`.
pub fn decode_map(text: &str, max_len: usize) -> Option<Vec<u8>> {
    let bytes = STANDARD.decode(text).ok()?;
    let mut map = Vec::new();
    let mut it = bytes.iter();
    while let Some(&value) = it.next() {
        let mut n: u64 = 0;
        let mut shift = 0;
        loop {
            let &b = it.next()?;
            if shift > 56 {
                return None;
            }
            n |= u64::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        let n = usize::try_from(n).ok()?;
        if n == 0 || map.len().checked_add(n)? > max_len {
            return None;
        }
        map.resize(map.len() + n, value);
    }
    Some(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn coalesce_merges_touching_and_overlapping() {
        assert_eq!(
            coalesce(vec![10..20, 0..5, 5..7, 15..30, 40..40, 31..32]),
            vec![0..7, 10..30, 31..32]
        );
        assert!(coalesce(vec![]).is_empty());
    }

    #[test]
    fn blocks_equal_selects_one_number() {
        let map = [0, 2, 2, 1, 2, 2];
        assert_eq!(blocks_equal(&map, 2, 100, 550), vec![100..300, 400..550]);
        assert_eq!(blocks_equal(&map, 1, 100, 550), vec![300..400]);
        assert!(blocks_equal(&map, 3, 100, 550).is_empty());
        assert!(blocks_equal(&map, 2, 0, 550).is_empty());
    }

    #[test]
    fn from_offset_rounds_down_and_clips() {
        let r = vec![0..4096, 8192..16384];
        assert_eq!(from_offset(&r, 0, 4096), r);
        assert_eq!(from_offset(&r, 5000, 4096), vec![8192..16384]);
        assert_eq!(from_offset(&r, 9000, 4096), vec![8192..16384]);
        assert_eq!(from_offset(&r, 13000, 4096), vec![12288..16384]);
        assert_eq!(from_offset(&r, 13000, 0), vec![13000..16384]);
        assert!(from_offset(&r, 16384, 4096).is_empty());
    }

    #[test]
    fn map_codec_rejects_garbage() {
        assert_eq!(decode_map("", 10), Some(vec![]));
        assert_eq!(decode_map("!!", 10), None);
        // A value without a length.
        assert_eq!(decode_map(&STANDARD.encode([7u8]), 10), None);
        // Longer than allowed.
        assert_eq!(decode_map(&encode_map(&[1; 11]), 10), None);
        // A zero-length run is never produced.
        assert_eq!(decode_map(&STANDARD.encode([7u8, 0]), 10), None);
    }

    proptest! {
        #[test]
        fn coalesced_ranges_are_sorted_disjoint_and_cover_the_same_bytes(
            raw in prop::collection::vec((0u64..200, 0u64..40), 0..30)
        ) {
            let ranges: Vec<Range<u64>> = raw.iter().map(|&(s, l)| s..s + l).collect();
            let merged = coalesce(ranges.clone());
            for w in merged.windows(2) {
                prop_assert!(w[0].end < w[1].start, "{:?} {:?}", w[0], w[1]);
            }
            for r in &merged {
                prop_assert!(r.start < r.end);
            }
            for byte in 0..260u64 {
                let before = ranges.iter().any(|r| r.contains(&byte));
                let after = merged.iter().any(|r| r.contains(&byte));
                prop_assert_eq!(before, after, "byte {}", byte);
            }
        }

        #[test]
        fn blocks_equal_covers_exactly_the_blocks(
            map in prop::collection::vec(0u8..4, 0..100),
            value in 0u8..4,
            shift in 0u32..4,
        ) {
            let bs = 1u32 << (shift + 9);
            let cap = map.len() as u64 * u64::from(bs);
            let ranges = blocks_equal(&map, value, bs, cap);
            for w in ranges.windows(2) {
                prop_assert!(w[0].end < w[1].start);
            }
            for (i, &b) in map.iter().enumerate() {
                let first = i as u64 * u64::from(bs);
                let covered = ranges.iter().any(|r| r.contains(&first));
                prop_assert_eq!(covered, b == value, "block {}", i);
            }
        }

        #[test]
        fn map_codec_round_trips(
            map in prop::collection::vec(prop_oneof![Just(0u8), Just(1), any::<u8>()], 0..3000)
        ) {
            let text = encode_map(&map);
            prop_assert_eq!(decode_map(&text, map.len()), Some(map));
        }
    }
}
