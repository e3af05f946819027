//! The load feed on arbitrary input (proptest, the in-suite stand-in for
//! `fuzz/fuzz_targets/load_feed.rs`, running the same check): frames of any instances read back
//! equal whatever the chunking, and arbitrary or mutated feeds never break the reader.

use anyedge_backhaul::feed::{end_frame, write_line, Entry, FeedReader};
use proptest::prelude::*;

/// `(app, instance, in-flight, hard limit, healthy)`: names as configs allow, plus `/` in the
/// instance, which the reader keeps.
type Line = (String, String, u32, u32, bool);

fn line() -> impl Strategy<Value = Line> {
    (
        "[a-z0-9._-]{1,12}",
        "[a-z0-9._/-]{1,12}",
        any::<u32>(),
        any::<u32>(),
        any::<bool>(),
    )
}

fn frames() -> impl Strategy<Value = Vec<Vec<Line>>> {
    proptest::collection::vec(proptest::collection::vec(line(), 0..6), 0..5)
}

fn write(frames: &[Vec<Line>]) -> String {
    let mut out = String::new();
    for frame in frames {
        for (app, instance, inflight, hard, healthy) in frame {
            write_line(
                &mut out,
                &format!("{app}/{instance}"),
                *inflight,
                *hard,
                *healthy,
            );
        }
        end_frame(&mut out);
    }
    out
}

fn entry(l: &Line) -> Entry<'_> {
    Entry {
        app: &l.0,
        instance: &l.1,
        inflight: l.2,
        hard_limit: Some(l.3),
        healthy: l.4,
        state: None,
    }
}

proptest! {
    #[test]
    fn written_frames_read_back_in_any_chunks(frames in frames(), cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8)) {
        let text = write(&frames);
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(text.len() + 1)).collect();
        cuts.push(text.len());
        cuts.sort_unstable();
        let mut reader = FeedReader::new();
        let mut got: Vec<Vec<Line>> = Vec::new();
        let mut from = 0;
        for cut in cuts {
            reader.push(&text.as_bytes()[from..cut]);
            from = cut;
            while let Some(frame) = reader.next_frame().expect("short frames") {
                prop_assert_eq!(frame.skipped, 0);
                got.push(frame.entries.iter().map(|e| (e.app.into(), e.instance.into(), e.inflight, e.hard_limit.unwrap_or(0), e.healthy)).collect());
            }
        }
        // A frame of no lines is a lone "\n": it only ends where the next "\n" comes, and two
        // in a row are one empty frame. Lines are never lost or split across frames.
        let lines: Vec<&Line> = frames.iter().flatten().collect();
        let read: Vec<&Line> = got.iter().flatten().collect();
        prop_assert_eq!(read, lines);
        let nonempty: Vec<&Vec<Line>> = frames.iter().filter(|f| !f.is_empty()).collect();
        let got_nonempty: Vec<&Vec<Line>> = got.iter().filter(|f| !f.is_empty()).collect();
        prop_assert_eq!(got_nonempty, nonempty);
        for l in frames.iter().flatten() {
            let mut one = String::new();
            write_line(&mut one, &format!("{}/{}", l.0, l.1), l.2, l.3, l.4);
            prop_assert_eq!(Entry::parse(one.trim_end_matches('\n').as_bytes()), Some(entry(l)));
        }
    }

    #[test]
    fn arbitrary_bytes_pass_the_fuzz_check(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        anyedge_backhaul::fuzz::load_feed(&bytes);
    }

    #[test]
    fn mutated_feeds_pass_the_fuzz_check(control in any::<u8>(), frames in frames(), edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)) {
        let mut bytes = vec![control];
        bytes.extend_from_slice(write(&frames).as_bytes());
        for (at, byte) in edits {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        anyedge_backhaul::fuzz::load_feed(&bytes);
    }
}
