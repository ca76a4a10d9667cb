//! The GitHub forge over replayed GitHub answers: it opens and labels issues as recorded from
//! the real API (`@octokit/fixtures`), and a landed commit closes the open issues its message
//! names, leaving closed ones, pull requests and unknown numbers alone.
//!
//! Recordings cover opening and labelling. For reading an issue, the issue object GitHub answered
//! when the recording opened it is served for `GET`; the closed forms of it are derived from it
//! (state, state_reason, closed_at changed, as GitHub answers after closing), and the comment's
//! answer is the REST description's example: each exchange's `source` says which.

use std::time::Duration;

use labops_engine::changes::forge::{Forge, GithubForge};
use labops_integrations::Secret;
use labops_integrations::github::{Client, Settings};
use labops_testkit::github::{Exchange, Replay, example, scenario};
use serde_json::{Value, json};

const REPO: &str = "octokit-fixture-org/add-labels-to-issue";
const ISSUES: &str = "/repos/octokit-fixture-org/add-labels-to-issue/issues";
const SHA: &str = "4c2a1f0e9b8d7c6a5f4e3d2c1b0a9f8e7d6c5b4a";

fn forge(url: &str) -> GithubForge {
    let settings = Settings { api_url: url.into(), repo: REPO.into(), token: Secret::new("0000000000000000000000000000000000000001"), timeout: Duration::from_secs(10) };
    GithubForge::new(Client::new(settings).expect("client"))
}

/// The issue GitHub answered when the recording opened it (open, #1).
fn recorded_issue() -> Value {
    scenario("add-labels-to-issue").remove(0).response
}

/// The recorded issue as number `n`, closed as completed.
fn closed(n: u64) -> Value {
    let mut i = recorded_issue();
    i["number"] = n.into();
    i["state"] = "closed".into();
    i["state_reason"] = "completed".into();
    i["closed_at"] = "2017-10-10T16:00:00Z".into();
    i
}

#[tokio::test]
async fn opens_and_labels_issues_as_recorded() {
    let recorded = scenario("add-labels-to-issue");
    let replay = Replay::start(recorded.clone()).await;
    let forge = forge(&replay.url());
    assert_eq!(forge.kind(), "github");

    let n = forge.open_issue("Issue without a label", "The analysis.", &[]).await.expect("open");
    assert_eq!(n, recorded[0].response["number"].as_u64().unwrap());
    forge.label(n, &["Foo".into(), "bAr".into(), "baZ".into()]).await.expect("label");

    let sent = replay.sent();
    assert_eq!(sent.len(), 2);
    assert_eq!((sent[0].method.as_str(), sent[0].path.as_str()), ("POST", ISSUES));
    assert_eq!(sent[0].body, json!({"title": "Issue without a label", "body": "The analysis."}));
    assert_eq!((sent[1].method.as_str(), sent[1].path.as_str()), ("POST", format!("{ISSUES}/1/labels").as_str()));
    assert_eq!(sent[1].body, recorded[1].request_body);
    assert!(replay.unused().is_empty());
    assert_eq!(forge.link(n), "https://github.com/octokit-fixture-org/add-labels-to-issue/issues/1");
}

#[tokio::test]
async fn a_landed_commit_closes_the_open_issues_it_names() {
    let replay = Replay::start(vec![
        Exchange::new("GET", &format!("{ISSUES}/1"), 200, recorded_issue(), "@octokit/fixtures add-labels-to-issue #0, served for GET"),
        Exchange::new("POST", &format!("{ISSUES}/1/comments"), 201, example("issue-comment"), "OpenAPI example issue-comment"),
        Exchange::new("PATCH", &format!("{ISSUES}/1"), 200, closed(1), "the recorded issue, closed"),
        // #2: GitHub already closed it when the commit reached the default branch.
        Exchange::new("GET", &format!("{ISSUES}/2"), 200, closed(2), "the recorded issue as #2, closed"),
        // #3: no such issue.
        Exchange::new(
            "GET",
            &format!("{ISSUES}/3"),
            404,
            json!({"message": "Not Found", "documentation_url": "https://docs.github.com/rest/issues/issues#get-an-issue"}),
            "GitHub's documented 404 body (basic-error)",
        ),
        // #4: a pull request (the issue endpoints answer for those too).
        Exchange::new(
            "GET",
            &format!("{ISSUES}/4"),
            200,
            {
                let mut pr = recorded_issue();
                pr["number"] = 4.into();
                pr["pull_request"] = example("issue")["pull_request"].clone();
                pr
            },
            "the recorded issue as #4 with the OpenAPI example's pull_request",
        ),
        Exchange::new("GET", &format!("{ISSUES}/1"), 200, closed(1), "the recorded issue, closed"),
    ])
    .await;
    let forge = forge(&replay.url());

    let message = "Add an LXC for the DNS cache\n\nRun: 12\n\nfixes #1, closes #2\nresolves #3 and fixes #4\n";
    let closed_now = forge.commit_landed(SHA, message).await.expect("commit landed");
    assert_eq!(closed_now, [1], "only #1 was open");

    let sent: Vec<(String, String, Value)> = replay.sent().into_iter().map(|s| (s.method, s.path, s.body)).collect();
    let expected = vec![
        ("GET".to_string(), format!("{ISSUES}/1"), Value::Null),
        ("POST".to_string(), format!("{ISSUES}/1/comments"), json!({"body": format!("Closed by commit {SHA}.")})),
        ("PATCH".to_string(), format!("{ISSUES}/1"), json!({"state": "closed", "state_reason": "completed"})),
        ("GET".to_string(), format!("{ISSUES}/2"), Value::Null),
        ("GET".to_string(), format!("{ISSUES}/3"), Value::Null),
        ("GET".to_string(), format!("{ISSUES}/4"), Value::Null),
    ];
    assert_eq!(sent, expected);

    // What Changes::close checks after the commit landed.
    assert_eq!(forge.state(1).await.expect("state"), "closed");
    assert!(replay.unused().is_empty());
}

#[tokio::test]
async fn a_failure_while_closing_is_reported_not_swallowed() {
    // GitHub refuses to read the issue (the recorded 422 of the `errors` scenario, served for
    // GET): the landing fails with GitHub's message, so the change stays committed and retries.
    let invalid = scenario("errors").into_iter().find(|e| e.status == 422).expect("a recorded 422");
    let replay = Replay::start(vec![Exchange { method: "GET".into(), path: format!("{ISSUES}/5"), ..invalid }]).await;
    let err = forge(&replay.url()).commit_landed(SHA, "fixes #5").await.unwrap_err();
    assert!(err.0.contains("422") && err.0.contains("Validation Failed"), "{err}");
    assert_eq!(replay.sent().len(), 1);
}
