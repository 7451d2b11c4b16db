//! `armature simulate` end to end on a small Mooncake-format trace: report.json with every field
//! the issue asks for, the three plots, a byte-identical report for the same seed, the tiers'
//! section with cache tiers, a clear error naming the line of a malformed trace, and on
//! disaggregated pools each request's outcome and a replayed threshold schedule.

mod support;

use std::process::Command;

use support::*;

fn simulate(trace: &std::path::Path, out: &std::path::Path, extra: &[&str]) -> std::process::Output {
    Command::new(bin())
        .args(["simulate", "--trace"])
        .arg(trace)
        .args(["--workers", "3", "--blocks-per-worker", "40", "--block-size", "16", "--seed", "9", "--out"])
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn simulate_writes_a_reproducible_report_and_plots() {
    let dir = temp_dir("simulate");
    let trace = dir.join("trace.jsonl");
    // Three conversations of three turns; each turn extends the last by one 16-token block.
    let mut lines = String::new();
    for turn in 0..3u64 {
        for conv in 0..3u64 {
            let ids: Vec<u64> = (0..=turn + 2).map(|b| if b == 0 { 0 } else { conv * 100 + b }).collect();
            let t = turn * 400 + conv * 50;
            lines += &format!(
                "{{\"timestamp\": {t}, \"input_length\": {}, \"output_length\": 4, \"hash_ids\": {ids:?}}}\n",
                ids.len() * 16 - 5
            );
        }
    }
    std::fs::write(&trace, lines).unwrap();
    let (a, b) = (dir.join("a"), dir.join("b"));
    let out = simulate(&trace, &a, &["--policy", "kv,round-robin"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(a.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["policy"], "kv");
    assert_eq!((report["requests"].as_u64(), report["completed"].as_u64()), (Some(9), Some(9)));
    for key in ["ttft_ms", "itl_ms", "e2e_ms"] {
        for stat in ["mean", "p50", "p90", "p99"] {
            assert!(report[key][stat].as_f64().unwrap() > 0.0, "{key}.{stat}");
        }
    }
    let hit = report["prefix_hit_ratio"].as_f64().unwrap();
    let (inf, shared) = (
        report["bounds"]["infinite_cache_hit_ratio"].as_f64().unwrap(),
        report["bounds"]["shared_pool_hit_ratio"].as_f64().unwrap(),
    );
    assert!(hit > 0.0 && hit <= inf + 1e-9 && shared <= inf + 1e-9, "{hit} {inf} {shared}");
    assert!(report["throughput_tok_s"].as_f64().unwrap() > 0.0);
    assert!(a.join("report-round-robin.json").exists());
    for plot in ["ttft_cdf.svg", "hit_ratio.svg", "load.svg"] {
        let svg = std::fs::read_to_string(a.join(plot)).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("<polyline"), "{plot}");
    }
    assert!(String::from_utf8_lossy(&out.stdout).contains("round-robin"));
    // The same seed gives a byte-identical report.
    assert!(simulate(&trace, &b, &["--policy", "kv,round-robin"]).status.success());
    assert_eq!(std::fs::read(a.join("report.json")).unwrap(), std::fs::read(b.join("report.json")).unwrap());

    // With cache tiers the report says what they did; without, it has no `tiers`.
    assert!(report.get("tiers").is_none());
    let t = dir.join("t");
    let out = simulate(&trace, &t, &["--host-blocks", "20", "--disk-blocks", "40", "--block-bytes", "1MiB"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tiered: serde_json::Value = serde_json::from_slice(&std::fs::read(t.join("report.json")).unwrap()).unwrap();
    assert_eq!(tiered["tiers"]["host_blocks_per_worker"], 20);
    assert_eq!(tiered["tiers"]["disk_blocks_per_worker"], 40);
    for key in
        ["onboarded_ratio", "local_onboards", "remote_onboards", "disk_onboards", "offloaded_blocks", "demoted_blocks"]
    {
        assert!(tiered["tiers"][key].is_number(), "{key}");
    }
    let out = simulate(&trace, &dir.join("u"), &["--host-blocks", "20", "--host-latency", "soon"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("soon"));

    // A malformed line is named; an unknown policy is refused.
    std::fs::write(&trace, "{\"timestamp\": 0, \"input_length\": 5, \"output_length\": 1}\n{\"timestamp\": 1}\n")
        .unwrap();
    let out = simulate(&trace, &dir.join("c"), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("line 2") && err.contains("input_length"), "{err}");
    let out = simulate(&trace, &dir.join("d"), &["--policy", "fastest"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("unknown policy"));
}

#[test]
fn simulate_under_faults_reports_them_and_replays() {
    let dir = temp_dir("simulate-faults");
    let trace = dir.join("trace.jsonl");
    // 40 conversations of 5 turns over about 20 s, each turn one block longer.
    let mut lines = String::new();
    for turn in 0..5u64 {
        for conv in 0..40u64 {
            let ids: Vec<u64> = (0..=turn + 3).map(|b| conv * 100 + b).collect();
            let t = turn * 4000 + conv * 90;
            lines += &format!(
                "{{\"timestamp\": {t}, \"input_length\": {}, \"output_length\": 30, \"hash_ids\": {ids:?}}}\n",
                ids.len() * 16 - 3
            );
        }
    }
    std::fs::write(&trace, lines).unwrap();
    let faults = ["--fault-seed", "5", "--fault-every", "2s", "--lease", "1s"];
    let (a, b) = (dir.join("a"), dir.join("b"));
    for out in [&a, &b] {
        let run = simulate(&trace, out, &faults);
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    }
    let text = std::fs::read(a.join("report.json")).unwrap();
    assert_eq!(text, std::fs::read(b.join("report.json")).unwrap(), "the same fault seed replays exactly");
    let report: serde_json::Value = serde_json::from_slice(&text).unwrap();
    let f = &report["faults"];
    assert_eq!(f["fault_seed"], 5);
    let count = |k: &str| f[k].as_u64().unwrap_or_else(|| panic!("faults.{k} in {f}"));
    assert!(count("faults") >= 3 && !f["plan"].as_array().unwrap().is_empty(), "{f}");
    assert_eq!((count("lost"), count("duplicated")), (0, 0));
    assert_eq!(report["completed"].as_u64().unwrap() + count("failed"), 200);
    for key in ["migrated", "stale_discarded", "dumps", "kv_batches_lost"] {
        count(key);
    }
    // A plan by hand: a crash moves the requests of that worker.
    let c = dir.join("c");
    let run = simulate(&trace, &c, &["--faults", "crash:w1@5s, partition:w2@8s+3s", "--lease", "1s"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(c.join("report.json")).unwrap()).unwrap();
    assert!(report["faults"]["migrated"].as_u64().unwrap() > 0, "{}", report["faults"]);
    assert_eq!(report["faults"]["plan"][0]["kind"], "crash");
    // A bad plan is named.
    let bad = simulate(&trace, &dir.join("d"), &["--faults", "crash:w7@1s"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("crash:w7@1s") && err.contains("worker 7 of 3"), "{err}");
}

#[test]
fn simulate_pools_write_each_request_and_replay_a_threshold_schedule() {
    let dir = temp_dir("simulate-pools");
    let trace = dir.join("trace.jsonl");
    // 30 prompts of 10 blocks, one every 100 ms, 8-token answers.
    let mut lines = String::new();
    for i in 0..30u64 {
        let ids: Vec<u64> = (0..10).map(|b| i * 100 + b).collect();
        lines += &format!(
            "{{\"timestamp\": {}, \"input_length\": 160, \"output_length\": 8, \"hash_ids\": {ids:?}}}\n",
            i * 100
        );
    }
    std::fs::write(&trace, lines).unwrap();
    let pools = |out: &str, extra: &[&str]| {
        let mut args = vec!["--pools", "1,1", "--prefill-busy-blocks", "1000000000"];
        args.extend_from_slice(extra);
        simulate(&trace, &dir.join(out), &args)
    };
    let read = |out: &str| -> (serde_json::Value, Vec<String>) {
        let report = serde_json::from_slice(&std::fs::read(dir.join(out).join("pools.json")).unwrap()).unwrap();
        let csv = std::fs::read_to_string(dir.join(out).join("requests.csv")).unwrap();
        (report, csv.lines().map(String::from).collect())
    };
    let run = pools("a", &[]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let (report, rows) = read("a");
    assert_eq!(rows[0], "arrival_s,ttft_s,mean_itl_s,within_slo");
    assert_eq!(rows.len(), 31);
    let within = rows[1..].iter().filter(|r| r.ends_with(",1")).count() as u64;
    assert_eq!(report["goodput"].as_u64(), Some(within));
    assert_eq!(report["local_prefills"], 0, "10 blocks go to the prefill worker under the threshold of 8");
    let arrivals: Vec<f64> = rows[1..].iter().map(|r| r.split(',').next().unwrap().parse().unwrap()).collect();
    assert!((arrivals[29] - 2.9).abs() < 1e-6, "{arrivals:?}");

    // From 1.45 s on the threshold is 16 blocks: the last 15 prompts stay on the decode worker.
    let schedule = dir.join("schedule.txt");
    std::fs::write(&schedule, "# seconds blocks\n0 8\n1.45 16\n").unwrap();
    let run = pools("b", &["--disagg-schedule", schedule.to_str().unwrap()]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(read("b").0["local_prefills"], 15);

    // A bad line is named; the planner sets its own threshold.
    std::fs::write(&schedule, "0 8\n1.5 lots\n").unwrap();
    let bad = pools("c", &["--disagg-schedule", schedule.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("line 2") && err.contains("lots"), "{err}");
    let planned = pools("d", &["--planner", "load", "--disagg-schedule", schedule.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&planned.stderr);
    assert!(!planned.status.success() && err.contains("the planner sets its own"), "{err}");
}
