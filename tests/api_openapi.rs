//! The OpenAPI document matches the routes the service serves.

#[path = "common/service.rs"]
mod harness;

use std::collections::BTreeSet;

use harness::ServiceProcess;
use serde_json::Value;

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// The routes a UI and scripts rely on, as the service promises them.
const ROUTES: [(&str, &str); 17] = [
    ("post", "/v1/integrations"),
    ("get", "/v1/integrations"),
    ("get", "/v1/integrations/{id}"),
    ("delete", "/v1/integrations/{id}"),
    ("put", "/v1/integrations/{id}/package"),
    ("patch", "/v1/integrations/{id}/env"),
    ("get", "/v1/actions"),
    ("post", "/v1/integrations/{id}/form"),
    ("post", "/v1/integrations/{id}/jobs"),
    ("get", "/v1/jobs/{job_id}"),
    ("get", "/v1/jobs"),
    ("delete", "/v1/jobs/{job_id}"),
    ("get", "/v1/integrations/{id}/health"),
    ("post", "/v1/integrations/{id}/describe"),
    ("get", "/healthz"),
    ("get", "/metrics"),
    ("get", "/v1/openapi.json"),
];

fn document() -> Value {
    serde_json::from_str(agentrun::service::api::OPENAPI_JSON).expect("openapi.json is JSON")
}

fn operations(document: &Value) -> BTreeSet<(String, String)> {
    let mut found = BTreeSet::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for method in METHODS {
            if item.get(method).is_some() {
                found.insert((method.to_owned(), path.clone()));
            }
        }
    }
    found
}

fn concrete(path: &str) -> String {
    path.replace("{id}", "00000000-0000-5000-8000-000000000000")
        .replace("{job_id}", "1")
}

#[test]
fn document_lists_the_promised_routes() {
    let document = document();
    assert_eq!(document["openapi"], "3.1.0");
    let expected: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(method, path)| ((*method).to_owned(), (*path).to_owned()))
        .collect();
    assert_eq!(operations(&document), expected);

    // Every schema reference resolves.
    let text = agentrun::service::api::OPENAPI_JSON;
    for reference in text.split("\"$ref\": \"#/components/schemas/").skip(1) {
        let name = reference.split('"').next().unwrap_or_default();
        assert!(
            document["components"]["schemas"].get(name).is_some(),
            "unresolved schema {name}"
        );
    }
}

/// Each documented operation is routed and returns a documented status. Each other method
/// on a documented path gets 405.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_serves_exactly_the_documented_operations() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut service = ServiceProcess::start(
        dir.path(),
        "executor = \"subprocess\"\n[health]\ninterval_secs = 0\n",
        &[],
    );
    service.wait_ready().await;
    let client = service.client();
    let document = document();

    let served = client.get("/v1/openapi.json").await;
    assert_eq!(served.status, 200);
    assert_eq!(served.json(), document);

    for (path, item) in document["paths"].as_object().expect("paths") {
        for method in METHODS {
            let response = client
                .request(
                    &method.to_ascii_uppercase(),
                    &concrete(path),
                    Some("application/json"),
                    b"{}".to_vec(),
                )
                .await;
            match item.get(method) {
                Some(operation) => {
                    let status = response.status.to_string();
                    assert!(
                        operation["responses"].get(&status).is_some(),
                        "{method} {path} answered {status}, which is not documented: {}",
                        response.text()
                    );
                    if response.status == 404 {
                        assert_ne!(response.json()["error"], "no_route", "{method} {path}");
                    }
                }
                None => {
                    assert_eq!(response.status, 405, "{method} {path}: {}", response.text());
                    assert_eq!(response.json()["error"], "method_not_allowed");
                }
            }
        }
    }
}
