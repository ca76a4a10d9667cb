//! The GitHub client against responses recorded from the real api.github.com
//! (`@octokit/fixtures`), replayed from a loopback server: the requests it sends match the
//! recorded ones, and it reads the recorded answers right.
//!
//! The recordings cover opening an issue and adding labels (scenario `add-labels-to-issue`) and
//! a validation error (scenario `errors`). None covers commenting, closing or reading one issue:
//! those are tested against the examples of GitHub's REST description (`@octokit/openapi`), and
//! the read against the recorded issue object served for `GET`; each test says which.

use std::time::Duration;

use labops_integrations::Secret;
use labops_integrations::github::{Client, Error, Settings};
use labops_testkit::github::{Exchange, Replay, example, openapi, scenario};
use serde_json::{Value, json};

/// The token the recordings were made with (normalized by @octokit/fixtures).
const TOKEN: &str = "0000000000000000000000000000000000000001";

fn client(url: &str, repo: &str) -> Client {
    Client::new(Settings { api_url: url.into(), repo: repo.into(), token: Secret::new(TOKEN), timeout: Duration::from_secs(10) }).expect("client")
}

/// Every field the recorded client sent is sent with the same value.
fn assert_sends_recorded_fields(sent: &Value, recorded: &Value) {
    for (k, v) in recorded.as_object().expect("a recorded JSON body") {
        assert_eq!(&sent[k], v, "body field {k}: sent {sent}, recorded {recorded}");
    }
}

#[tokio::test]
async fn opens_an_issue_and_adds_labels_as_recorded() {
    let recorded = scenario("add-labels-to-issue");
    assert_eq!(recorded.len(), 2, "the scenario changed: {recorded:#?}");
    let replay = Replay::start(recorded.clone()).await;
    let gh = client(&replay.url(), "octokit-fixture-org/add-labels-to-issue");

    let title = recorded[0].request_body["title"].as_str().unwrap();
    let issue = gh.create_issue(title, "Opened by labops.", &[]).await.expect("create");
    let answer = &recorded[0].response;
    assert_eq!(issue.number, answer["number"].as_u64().unwrap());
    assert_eq!(issue.state, answer["state"]);
    assert_eq!(issue.title, answer["title"]);
    assert_eq!(issue.html_url, answer["html_url"]);
    assert!(issue.labels.is_empty() && !issue.is_pull_request);

    let wanted: Vec<String> = recorded[1].request_body["labels"].as_array().unwrap().iter().map(|l| l.as_str().unwrap().to_string()).collect();
    let labels = gh.add_labels(issue.number, &wanted).await.expect("labels");
    let answered: Vec<&str> = recorded[1].response.as_array().unwrap().iter().map(|l| l["name"].as_str().unwrap()).collect();
    assert_eq!(labels, answered);

    let sent = replay.sent();
    assert_eq!(sent.len(), 2);
    for (s, r) in sent.iter().zip(&recorded) {
        assert_eq!((s.method.as_str(), s.path.as_str()), (r.method.as_str(), r.path.as_str()));
        assert_eq!(s.served.as_deref(), Some(r.source.as_str()), "{} {} got no recorded answer", s.method, s.path);
        assert_sends_recorded_fields(&s.body, &r.request_body);
        assert_eq!(s.header("authorization"), Some(format!("Bearer {TOKEN}").as_str()));
        assert_eq!(s.header("accept"), Some("application/vnd.github+json"));
        assert_eq!(s.header("x-github-api-version"), Some("2022-11-28"));
        assert!(s.header("content-type").unwrap_or("").starts_with("application/json"));
    }
    // The body labops adds to the recorded request, and no labels field when there are none.
    assert_eq!(sent[0].body, json!({"title": title, "body": "Opened by labops."}));
    assert_eq!(sent[1].body, recorded[1].request_body);
    assert!(replay.unused().is_empty());

    // No request for no labels: GitHub wants at least one.
    assert!(gh.add_labels(1, &[]).await.unwrap().is_empty());
    assert_eq!(replay.sent().len(), 2);
}

#[tokio::test]
async fn opens_an_issue_with_labels_in_one_request() {
    // The recording opened its issue without labels; labops sends them with the issue. The
    // recorded answer is served to the request with labels.
    let mut recorded = scenario("add-labels-to-issue");
    recorded.truncate(1);
    let replay = Replay::start(recorded).await;
    let gh = client(&replay.url(), "octokit-fixture-org/add-labels-to-issue");
    let labels = vec!["labops-change".to_string(), "awaiting-approval".to_string()];
    assert_eq!(gh.create_issue("Issue without a label", "b", &labels).await.unwrap().number, 1);
    assert_eq!(replay.sent()[0].body, json!({"title": "Issue without a label", "body": "b", "labels": labels}));
}

#[tokio::test]
async fn comments_as_the_rest_description_documents() {
    // No recording comments on an issue: this replays the REST description's own request and
    // response examples for issues/create-comment.
    let op = &openapi()["paths"]["/repos/{owner}/{repo}/issues/{issue_number}/comments"]["post"];
    let request = op["requestBody"]["content"]["application/json"]["examples"]["default"]["value"].clone();
    let answer = example("issue-comment");
    let path = "/repos/octocat/Hello-World/issues/1347/comments";
    let replay = Replay::start(vec![Exchange::new("POST", path, 201, answer.clone(), "OpenAPI example issue-comment")]).await;
    let gh = client(&replay.url(), "octocat/Hello-World");

    let c = gh.create_comment(1347, request["body"].as_str().unwrap()).await.expect("comment");
    assert_eq!(c.id, answer["id"].as_u64().unwrap());
    assert_eq!(c.body, answer["body"]);
    assert_eq!(c.html_url, answer["html_url"]);
    let sent = replay.sent();
    assert_eq!((sent[0].method.as_str(), sent[0].path.as_str()), ("POST", path));
    assert_eq!(sent[0].body, request);
}

#[tokio::test]
async fn closes_as_completed_as_the_rest_description_documents() {
    // No recording closes an issue: the answer is the REST description's example for
    // issues/update (its example issue, which it shows open).
    let answer = example("issue");
    let path = "/repos/octocat/Hello-World/issues/1347";
    let replay = Replay::start(vec![Exchange::new("PATCH", path, 200, answer.clone(), "OpenAPI example issue")]).await;
    let gh = client(&replay.url(), "octocat/Hello-World");

    let issue = gh.close_issue(1347).await.expect("close");
    assert_eq!(issue.number, 1347);
    assert_eq!(issue.title, answer["title"]);
    let sent = replay.sent();
    assert_eq!((sent[0].method.as_str(), sent[0].path.as_str()), ("PATCH", path));
    assert_eq!(sent[0].body, json!({"state": "closed", "state_reason": "completed"}));
}

#[tokio::test]
async fn reads_an_issue_from_a_recorded_issue_object() {
    // No recording reads one issue; the issue object GitHub answered when the
    // add-labels-to-issue scenario opened it is served for GET, and the REST description's
    // example after it.
    let recorded = scenario("add-labels-to-issue").remove(0).response;
    let path = "/repos/octokit-fixture-org/add-labels-to-issue/issues/1";
    let replay = Replay::start(vec![
        Exchange::new("GET", path, 200, recorded.clone(), "@octokit/fixtures add-labels-to-issue #0, served for GET"),
        Exchange::new("GET", path, 200, example("issue"), "OpenAPI example issue"),
    ])
    .await;
    let gh = client(&replay.url(), "octokit-fixture-org/add-labels-to-issue");
    let i = gh.issue(1).await.expect("issue");
    assert_eq!((i.number, i.state.as_str(), i.state_reason.as_deref()), (1, "open", None));
    let i = gh.issue(1).await.expect("issue");
    assert_eq!((i.number, i.state.as_str()), (1347, "open"));
    assert_eq!(i.labels, ["bug"]);
    assert!(replay.sent().iter().all(|s| s.method == "GET" && s.path == path && s.body.is_null()));
    assert_eq!(gh.issue_url(7), "https://github.com/octokit-fixture-org/add-labels-to-issue/issues/7");
}

#[tokio::test]
async fn errors_say_what_github_said_and_what_to_do() {
    // The validation error GitHub answered in the `errors` scenario (to a label with a bad
    // colour), served for labops' add-labels request; and GitHub's documented 404 body.
    let invalid = scenario("errors").into_iter().find(|e| e.status == 422).expect("a recorded 422");
    let labels_path = "/repos/octokit-fixture-org/errors/issues/1/labels";
    let replay = Replay::start(vec![
        Exchange { path: labels_path.into(), ..invalid.clone() },
        Exchange::new(
            "GET",
            "/repos/octokit-fixture-org/errors/issues/9",
            404,
            json!({"message": "Not Found", "documentation_url": "https://docs.github.com/rest/issues/issues#get-an-issue"}),
            "GitHub's documented 404 body (basic-error)",
        ),
    ])
    .await;
    let gh = client(&replay.url(), "octokit-fixture-org/errors");

    let e = gh.add_labels(1, &["foo".into()]).await.unwrap_err();
    assert_eq!(e.status(), Some(422));
    let text = e.to_string();
    assert!(text.contains("422") && text.contains("Validation Failed") && text.contains("Label color is invalid"), "{text}");

    let e = gh.issue(9).await.unwrap_err();
    assert_eq!(e.status(), Some(404));
    let text = e.to_string();
    assert!(text.contains("issue #9 in octokit-fixture-org/errors") && text.contains("[forge] repo"), "{text}");
    assert!(!text.contains(TOKEN));

    // Nothing listens: unreachable, with the URL, without the token.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let e = client(&url, "octokit-fixture-org/errors").issue(1).await.unwrap_err();
    assert!(matches!(e, Error::Unreachable { .. }), "{e:?}");
    assert!(e.to_string().contains(&url) && !e.to_string().contains(TOKEN), "{e}");
}
