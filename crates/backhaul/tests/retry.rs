//! Retry-elsewhere reasons on arbitrary input (proptest, the in-suite stand-in for
//! `fuzz/fuzz_targets/retry_reason.rs`, running the same check).

use anyedge_backhaul::retry::RetryElsewhere;
use proptest::prelude::*;

proptest! {
    #[test]
    fn arbitrary_bytes_pass_the_fuzz_check(bytes in proptest::collection::vec(any::<u8>(), 0..24)) {
        anyedge_backhaul::fuzz::retry_reason(&bytes);
    }

    #[test]
    fn near_misses_are_other(i in 0..RetryElsewhere::ALL.len() - 1, at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let known = RetryElsewhere::ALL[i];
        let mut text = known.as_str().as_bytes().to_vec();
        let at = at.index(text.len());
        prop_assume!(text[at] != byte);
        text[at] = byte;
        anyedge_backhaul::fuzz::retry_reason(&text);
        prop_assert_ne!(RetryElsewhere::parse_bytes(&text), known);
    }
}
