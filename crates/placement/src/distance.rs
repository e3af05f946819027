//! Distance from this edge to an instance, as an estimated round-trip time in microseconds:
//! measured when known, else guessed from the regions' coordinates.

/// Mean radius of the Earth, in km.
pub const EARTH_RADIUS_KM: f64 = 6_371.0;

/// Round trip per km of great circle: light in fibre covers about 200 km/ms one way, and
/// routes are about 1.5 times the great circle, so 2 × 1.5 / 200 ms = 15 µs per km.
pub const RTT_US_PER_KM: f64 = 15.0;

/// An instance in this edge's own region.
pub const SAME_REGION_US: u32 = 1_000;

/// An instance in another region whose coordinates (or this edge's) are unknown.
pub const OTHER_REGION_US: u32 = 100_000;

/// Great-circle distance in km between two (latitude, longitude) points in degrees
/// (haversine). NaN when a coordinate is NaN.
pub fn great_circle_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (lat_a, lon_a) = (a.0.to_radians(), a.1.to_radians());
    let (lat_b, lon_b) = (b.0.to_radians(), b.1.to_radians());
    let half_dlat = ((lat_b - lat_a) / 2.0).sin();
    let half_dlon = ((lon_b - lon_a) / 2.0).sin();
    let h = half_dlat * half_dlat + lat_a.cos() * lat_b.cos() * half_dlon * half_dlon;
    // Rounding can push h a hair past 1 for antipodes; clamp (unlike min) keeps a NaN a NaN.
    2.0 * EARTH_RADIUS_KM * h.sqrt().clamp(0.0, 1.0).asin()
}

/// Estimated round trip over `km` of great circle, in µs, rounded; saturates at `u32::MAX`
/// (and gives 0 for a negative or NaN distance).
pub fn estimate_rtt_us(km: f64) -> u32 {
    let us = (km * RTT_US_PER_KM).round();
    if us.is_nan() || us <= 0.0 {
        0
    } else if us >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        // In range: checked just above.
        us as u32
    }
}

/// The `distance_us` of a candidate: the measured RTT when known; else `SAME_REGION_US` in
/// this edge's region; else the great-circle estimate when both coordinates are known (never
/// below `SAME_REGION_US + 1`, so another region is never nearer than the local one unless
/// measured); else `OTHER_REGION_US`.
pub fn estimate(
    measured_rtt_us: Option<u32>,
    same_region: bool,
    from: Option<(f64, f64)>,
    to: Option<(f64, f64)>,
) -> u32 {
    if let Some(us) = measured_rtt_us {
        return us;
    }
    if same_region {
        return SAME_REGION_US;
    }
    match (from, to) {
        (Some(from), Some(to)) => {
            let km = great_circle_km(from, to);
            if km.is_finite() {
                estimate_rtt_us(km).max(SAME_REGION_US + 1)
            } else {
                OTHER_REGION_US
            }
        }
        _ => OTHER_REGION_US,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ORD: (f64, f64) = (41.98, -87.90);
    const SYD: (f64, f64) = (-33.94, 151.18);
    const LHR: (f64, f64) = (51.47, -0.45);
    const JFK: (f64, f64) = (40.64, -73.78);

    #[test]
    fn known_great_circles() {
        let near = |got: f64, want: f64| (got - want).abs() < want * 0.01;
        assert!(
            near(great_circle_km(ORD, SYD), 14_870.0),
            "{}",
            great_circle_km(ORD, SYD)
        );
        assert!(
            near(great_circle_km(JFK, LHR), 5_540.0),
            "{}",
            great_circle_km(JFK, LHR)
        );
        assert_eq!(great_circle_km(ORD, ORD), 0.0);
        let antipodes = great_circle_km((0.0, 0.0), (0.0, 180.0));
        assert!((antipodes - std::f64::consts::PI * EARTH_RADIUS_KM).abs() < 1e-6);
    }

    #[test]
    fn rtt_is_15_us_per_km_and_saturates() {
        assert_eq!(estimate_rtt_us(0.0), 0);
        assert_eq!(estimate_rtt_us(1.0), 15);
        assert_eq!(estimate_rtt_us(5_540.0), 83_100);
        assert_eq!(estimate_rtt_us(1e12), u32::MAX);
        assert_eq!(estimate_rtt_us(f64::INFINITY), u32::MAX);
        assert_eq!(estimate_rtt_us(-3.0), 0);
        assert_eq!(estimate_rtt_us(f64::NAN), 0);
    }

    #[test]
    fn estimate_falls_back_in_order() {
        assert_eq!(estimate(Some(42), false, Some(ORD), Some(SYD)), 42);
        assert_eq!(estimate(Some(42), true, None, None), 42);
        assert_eq!(estimate(None, true, Some(ORD), Some(SYD)), SAME_REGION_US);
        let ord_syd = estimate(None, false, Some(ORD), Some(SYD));
        assert!((220_000..226_000).contains(&ord_syd), "{ord_syd}");
        // Another region at the same coordinates is still farther than the local one.
        assert_eq!(
            estimate(None, false, Some(ORD), Some(ORD)),
            SAME_REGION_US + 1
        );
        assert_eq!(estimate(None, false, None, Some(SYD)), OTHER_REGION_US);
        assert_eq!(estimate(None, false, Some(ORD), None), OTHER_REGION_US);
        let nan = estimate(None, false, Some((f64::NAN, 0.0)), Some(SYD));
        assert_eq!(nan, OTHER_REGION_US);
    }

    proptest! {
        #[test]
        fn great_circle_is_a_symmetric_bounded_distance(
            a in (-90.0f64..=90.0, -180.0f64..=180.0),
            b in (-90.0f64..=90.0, -180.0f64..=180.0),
        ) {
            let ab = great_circle_km(a, b);
            prop_assert!((ab - great_circle_km(b, a)).abs() < 1e-6);
            prop_assert!((0.0..=std::f64::consts::PI * EARTH_RADIUS_KM + 1e-6).contains(&ab));
        }

        #[test]
        fn unmeasured_other_region_is_never_nearer_than_local(
            a in (-90.0f64..=90.0, -180.0f64..=180.0),
            b in (-90.0f64..=90.0, -180.0f64..=180.0),
        ) {
            prop_assert!(estimate(None, false, Some(a), Some(b)) > SAME_REGION_US);
        }
    }
}
