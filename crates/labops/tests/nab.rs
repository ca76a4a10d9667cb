//! `labops bench nab` on a small corpus laid out as NAB lays it out: result files named as NAB
//! names them, with its columns and labels, and one score line per profile.

mod common;

use common::labops;

#[test]
fn the_harness_writes_nab_results_and_scores_each_profile() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data/artificialWithAnomaly");
    std::fs::create_dir_all(&data).unwrap();
    let mut csv = String::from("timestamp,value\n");
    for i in 0..2000 {
        let v = if (1500..1510).contains(&i) { 80.0 } else { 10.0 + ((i as f64) * 0.7).sin() };
        csv.push_str(&format!("2014-04-01 {:02}:{:02}:00,{v}\n", (i / 60) % 24, i % 60).replace("2014-04-01", &format!("2014-04-{:02}", 1 + i / 1440)));
    }
    std::fs::write(data.join("spike.csv"), csv).unwrap();
    std::fs::write(
        dir.path().join("labels.json"),
        r#"{"artificialWithAnomaly/spike.csv": [["2014-04-02 01:00:00.000000", "2014-04-02 02:00:00.000000"]]}"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("profiles.json"),
        r#"{"standard": {"CostMatrix": {"tpWeight": 1.0, "fnWeight": 1.0, "fpWeight": 0.11, "tnWeight": 1.0}},
            "reward_low_FP_rate": {"CostMatrix": {"tpWeight": 1.0, "fnWeight": 1.0, "fpWeight": 0.22, "tnWeight": 1.0}},
            "reward_low_FN_rate": {"CostMatrix": {"tpWeight": 1.0, "fnWeight": 2.0, "fpWeight": 0.11, "tnWeight": 1.0}}}"#,
    )
    .unwrap();
    let out = dir.path().join("results");
    let o = labops()
        .args(["bench", "nab", "--data"])
        .arg(dir.path().join("data"))
        .arg("--labels")
        .arg(dir.path().join("labels.json"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("standard: ") && lines[1].starts_with("reward_low_FP_rate: ") && lines[2].starts_with("reward_low_FN_rate: "), "{text}");
    // The spike sits at the window's start (rows 1500..1509, the window is rows 1500..1560): a
    // detector that catches it early scores high.
    let standard: f64 = lines[0].split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(standard > 80.0, "{text}");
    let results = std::fs::read_to_string(out.join("artificialWithAnomaly/labops_spike.csv")).unwrap();
    let rows: Vec<&str> = results.lines().collect();
    assert_eq!(rows[0], "timestamp,value,anomaly_score,label");
    assert_eq!(rows.len(), 2001);
    assert!(rows[1501].ends_with(",1"), "{}", rows[1501]);
    assert!(rows[1400].ends_with(",0"));
    // Bad input says what is wrong.
    let o = labops().args(["bench", "nab", "--data", "/nonexistent", "--labels"]).arg(dir.path().join("labels.json")).arg("--out").arg(&out).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no CSV files under /nonexistent"));
}
