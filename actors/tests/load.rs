//! `dyno load`: synthetic agents over the real protocol against a real coordinator
//! process. A short run loses no frame and the coordinator counts every report; joins and
//! link changes are coalesced into fewer fleet plans by `replan_gap_ms`.
mod common;
use common::{assert_clean_failure, dyno};

fn load(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["load", "--json"];
    all.extend_from_slice(args);
    let (ok, out, err) = dyno(&all);
    assert!(ok, "{all:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn a_short_load_loses_no_frame_and_every_report_is_counted() {
    let r = load(&["--agents", "40", "--duration-s", "6", "--rate-fps", "4"]);
    let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("{k}: {r}"));
    eprintln!(
        "40 agents x 6 s x 4 fps: {} frames sent, {} answered by the cloud, {} busy and {} \
         failed (finished on the device), {} lost, {} second answers; reports {} / {}; \
         control p99 {} ms; coordinator {} MB",
        n("frames_sent"),
        n("frames_answered"),
        n("frames_busy"),
        n("frames_failed"),
        n("frames_lost"),
        n("duplicate_answers"),
        n("reports_sent"),
        n("reports_counted"),
        r["control_rtt_ms"]["p99"],
        r["coordinator"][0]["rss_mb"]
    );
    assert_eq!(n("registered"), 40);
    assert_eq!(n("frames_lost"), 0);
    assert_eq!(n("duplicate_answers"), 0);
    assert_eq!(n("control_lost"), 0);
    // Every frame sent got an answer, and the coordinator counted every report.
    assert_eq!(
        n("frames_answered") + n("frames_busy") + n("frames_failed"),
        n("frames_sent")
    );
    assert_eq!(n("reports_counted"), n("reports_sent"));
    // 40 x 6 x 4 = 960 ticks; the first second goes to joining.
    assert!(n("frames_sent") > 600, "{r}");
    assert!(r["control_rtt_ms"]["p99"].as_f64().unwrap() > 0.0);
    assert!(n("replans") > 0);
    assert!(r["coordinator"].as_array().unwrap().len() >= 5);
}

#[test]
fn joins_and_link_changes_are_coalesced_into_fewer_plans() {
    let replans = |gap: &str| {
        load(&[
            "--agents",
            "40",
            "--duration-s",
            "4",
            "--rate-fps",
            "4",
            "--replan-gap-ms",
            gap,
        ])["replans"]
            .as_u64()
            .unwrap()
    };
    let (every, coalesced) = (replans("0"), replans("1000"));
    eprintln!(
        "fleet plans in 4 s: {every} on every join and change, {coalesced} at most once a second"
    );
    // 40 joins alone plan 40 times without a gap; with 1 s, about one plan a second from
    // the gap and one from the tick.
    assert!(every >= 40, "{every}");
    assert!(coalesced <= 20, "{coalesced}");
}

#[test]
fn bad_load_arguments_are_refused() {
    assert_clean_failure(&["load", "--agents", "0"], &["--agents 0"]);
    assert_clean_failure(&["load", "--rate-fps", "0"], &["--rate-fps 0"]);
    assert_clean_failure(&["load", "--duration-s", "nan"], &["--duration-s NaN"]);
    // A coordinator that is not there: said before any agent starts.
    let nobody = format!("127.0.0.1:{}", common::free_port());
    assert_clean_failure(
        &[
            "load",
            "--coordinator",
            &nobody,
            "--insecure",
            "--duration-s",
            "1",
        ],
        &[&nobody, "is it running there?"],
    );
}
