//! The built-in registry over loopback, driven with raw HTTP (Confluent's paths, bodies and
//! error codes) and with the Rust client: ids and versions, identity, deletes, configs, each
//! compatibility level with compatible and incompatible Avro changes, verbose messages,
//! references, restarts, authentication and retries.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{http, Dir, Server};
use reqwest::Method;
use secrecy::SecretString;
use serde_json::{json, Value};
use tributary_core::error::{Classify, ErrorClass};
use tributary_core::retry::RetryPolicy;
use tributary_registry::{
    ClientAuth, Compatibility, NewSchema, RegistryClient, RegistryClientConfig, ServerAuth,
    VersionSpec,
};

/// A record `User` with the given fields (JSON field objects).
fn user(fields: Value) -> String {
    json!({"type": "record", "name": "User", "namespace": "test", "fields": fields}).to_string()
}

fn avro(schema: &str) -> NewSchema {
    NewSchema {
        schema: schema.to_string(),
        ..NewSchema::default()
    }
}

fn fast_retries() -> RetryPolicy {
    RetryPolicy {
        initial_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        max_attempts: 4,
        ..RetryPolicy::default()
    }
}

fn client(url: &str) -> RegistryClient {
    let mut config = RegistryClientConfig::new(url);
    config.retry = fast_retries();
    RegistryClient::new(config).unwrap()
}

async fn register(url: &str, subject: &str, schema: &str) -> (u16, Value) {
    let (s, _, b) = http(
        url,
        Method::POST,
        &format!("/subjects/{subject}/versions"),
        Some(json!({"schema": schema})),
    )
    .await;
    (s, b)
}

#[tokio::test]
async fn ids_versions_identity_and_the_read_endpoints() {
    let dir = Dir::new();
    let server = Server::start(&dir.db()).await;
    let url = &server.url;
    let v1 = user(json!([{"name": "id", "type": "int"}]));

    let (status, body) = register(url, "orders-value", &v1).await;
    assert_eq!((status, body.clone()), (200, json!({"id": 1})));
    // Same schema again, even spelled differently: same id, no new version.
    let respelled =
        serde_json::to_string_pretty(&serde_json::from_str::<Value>(&v1).unwrap()).unwrap();
    assert_eq!(
        register(url, "orders-value", &respelled).await,
        (200, json!({"id": 1}))
    );
    assert_eq!(
        http(url, Method::GET, "/subjects/orders-value/versions", None)
            .await
            .2,
        json!([1])
    );
    // Same schema under another subject: the same global id.
    assert_eq!(
        register(url, "other-value", &v1).await,
        (200, json!({"id": 1}))
    );
    // A new schema: a new id and version 2.
    let v2 = user(
        json!([{"name": "id", "type": "int"}, {"name": "note", "type": "string", "default": ""}]),
    );
    assert_eq!(
        register(url, "orders-value", &v2).await,
        (200, json!({"id": 2}))
    );

    let (status, ct, latest) = http(
        url,
        Method::GET,
        "/subjects/orders-value/versions/latest",
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(ct, "application/vnd.schemaregistry.v1+json");
    assert_eq!(latest["version"], 2);
    assert_eq!(latest["id"], 2);
    assert_eq!(latest["subject"], "orders-value");
    assert!(latest.get("schemaType").is_none(), "Avro is implied");
    let parsed: Value = serde_json::from_str(latest["schema"].as_str().unwrap()).unwrap();
    assert_eq!(parsed["fields"][1]["name"], "note");
    assert_eq!(
        http(url, Method::GET, "/subjects/orders-value/versions/1", None)
            .await
            .2["id"],
        1
    );
    assert_eq!(
        http(url, Method::GET, "/subjects/orders-value/versions/-1", None)
            .await
            .2["version"],
        2
    );
    // The schema itself.
    let raw = http(
        url,
        Method::GET,
        "/subjects/orders-value/versions/1/schema",
        None,
    )
    .await
    .2;
    assert_eq!(raw["name"], "User");
    let by_id = http(url, Method::GET, "/schemas/ids/1", None).await.2;
    assert_eq!(
        serde_json::from_str::<Value>(by_id["schema"].as_str().unwrap()).unwrap(),
        serde_json::from_str::<Value>(&v1).unwrap()
    );
    assert_eq!(
        http(url, Method::GET, "/schemas/ids/1/schema", None)
            .await
            .2["name"],
        "User"
    );
    assert_eq!(
        http(url, Method::GET, "/schemas/ids/1/subjects", None)
            .await
            .2,
        json!(["orders-value", "other-value"])
    );
    assert_eq!(
        http(url, Method::GET, "/schemas/ids/1/versions", None)
            .await
            .2,
        json!([{"subject": "orders-value", "version": 1}, {"subject": "other-value", "version": 1}])
    );
    assert_eq!(
        http(url, Method::GET, "/subjects", None).await.2,
        json!(["orders-value", "other-value"])
    );
    // Lookup.
    let (status, _, found) = http(
        url,
        Method::POST,
        "/subjects/orders-value",
        Some(json!({"schema": v2})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        (found["id"].clone(), found["version"].clone()),
        (json!(2), json!(2))
    );
    // Housekeeping endpoints.
    assert_eq!(
        http(url, Method::GET, "/mode", None).await.2,
        json!({"mode": "READWRITE"})
    );
    let types = http(url, Method::GET, "/schemas/types", None).await.2;
    for t in ["AVRO", "JSON", "PROTOBUF"] {
        assert!(types.as_array().unwrap().contains(&json!(t)), "{types}");
    }
    // Plain application/json bodies are accepted too.
    let resp = reqwest::Client::new()
        .post(format!("{url}/subjects/plain-value/versions"))
        .header("content-type", "application/json")
        .body(json!({"schema": "\"string\""}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn errors_carry_confluent_codes() {
    let dir = Dir::new();
    let server = Server::start(&dir.db()).await;
    let url = &server.url;
    let v1 = user(json!([{"name": "id", "type": "int"}]));
    register(url, "s", &v1).await;

    let code = |r: (u16, String, Value)| (r.0, r.2["error_code"].as_u64().unwrap_or(0), r.1);
    let ct = "application/vnd.schemaregistry.v1+json".to_string();
    assert_eq!(
        code(http(url, Method::GET, "/subjects/nope/versions", None).await),
        (404, 40401, ct.clone())
    );
    assert_eq!(
        code(http(url, Method::GET, "/subjects/nope/versions/1", None).await).1,
        40401
    );
    assert_eq!(
        code(http(url, Method::GET, "/subjects/s/versions/7", None).await),
        (404, 40402, ct.clone())
    );
    assert_eq!(
        code(http(url, Method::GET, "/schemas/ids/99", None).await),
        (404, 40403, ct.clone())
    );
    assert_eq!(
        code(
            http(
                url,
                Method::POST,
                "/subjects/s",
                Some(json!({"schema": "\"long\""}))
            )
            .await
        )
        .1,
        40403
    );
    for bad_version in ["0", "abc", "2147483648", "-2"] {
        assert_eq!(
            code(
                http(
                    url,
                    Method::GET,
                    &format!("/subjects/s/versions/{bad_version}"),
                    None
                )
                .await
            ),
            (422, 42202, ct.clone()),
            "{bad_version}"
        );
    }
    for bad in [
        json!({"schema": "{\"type\":\"record\",\"name\":\"R\"}"}),
        json!({"schema": "not json"}),
        json!({"schema": "{\"type\":\"record\",\"name\":\"R\",\"fields\":[{\"name\":\"a\",\"type\":\"int\",\"default\":\"x\"}]}"}),
        json!({"schema": "\"string\"", "schemaType": "XML"}),
    ] {
        let (status, _, body) = http(
            url,
            Method::POST,
            "/subjects/s2/versions",
            Some(bad.clone()),
        )
        .await;
        assert_eq!(
            (status, body["error_code"].clone()),
            (422, json!(42201)),
            "{bad} → {body}"
        );
    }
    assert_eq!(
        code(
            http(
                url,
                Method::PUT,
                "/config",
                Some(json!({"compatibility": "SIDEWAYS"}))
            )
            .await
        ),
        (422, 42203, ct.clone())
    );
    assert_eq!(
        code(http(url, Method::GET, "/config/s", None).await).1,
        40408
    );
    assert_eq!(
        code(http(url, Method::GET, "/no/such/route", None).await).1,
        404
    );
    // An incompatible schema: 409 with the reason.
    let (status, body) = register(url, "s", &user(json!([{"name": "id", "type": "string"}]))).await;
    assert_eq!((status, body["error_code"].clone()), (409, json!(409)));
    assert!(
        body["message"].as_str().unwrap().contains("TYPE_MISMATCH"),
        "{body}"
    );
    server.stop().await;
}

#[tokio::test]
async fn soft_and_permanent_deletes_follow_confluent_rules() {
    let dir = Dir::new();
    let server = Server::start(&dir.db()).await;
    let url = &server.url;
    let v1 = user(json!([{"name": "id", "type": "int"}]));
    let v2 =
        user(json!([{"name": "id", "type": "int"}, {"name": "n", "type": "int", "default": 0}]));
    assert_eq!(register(url, "s", &v1).await.1["id"], 1);
    assert_eq!(register(url, "s", &v2).await.1["id"], 2);

    // Permanent before soft: refused.
    let r = http(
        url,
        Method::DELETE,
        "/subjects/s/versions/1?permanent=true",
        None,
    )
    .await;
    assert_eq!((r.0, r.2["error_code"].clone()), (404, json!(40407)));
    // Soft delete of version 1.
    assert_eq!(
        http(url, Method::DELETE, "/subjects/s/versions/1", None)
            .await
            .2,
        json!(1)
    );
    assert_eq!(
        http(url, Method::GET, "/subjects/s/versions", None).await.2,
        json!([2])
    );
    assert_eq!(
        http(url, Method::GET, "/subjects/s/versions?deleted=true", None)
            .await
            .2,
        json!([1, 2])
    );
    assert_eq!(
        http(url, Method::GET, "/subjects/s/versions/1", None)
            .await
            .2["error_code"],
        40402
    );
    assert_eq!(
        http(
            url,
            Method::GET,
            "/subjects/s/versions/1?deleted=true",
            None
        )
        .await
        .2["id"],
        1
    );
    // The id still resolves (consumers hold it).
    assert_eq!(http(url, Method::GET, "/schemas/ids/1", None).await.0, 200);
    let r = http(url, Method::DELETE, "/subjects/s/versions/1", None).await;
    assert_eq!((r.0, r.2["error_code"].clone()), (404, json!(40406)));
    // Now permanent works.
    assert_eq!(
        http(
            url,
            Method::DELETE,
            "/subjects/s/versions/1?permanent=true",
            None
        )
        .await
        .2,
        json!(1)
    );
    assert_eq!(
        http(url, Method::GET, "/subjects/s/versions?deleted=true", None)
            .await
            .2,
        json!([2])
    );

    // Subject: permanent first is refused, soft then soft again is refused, soft then permanent works.
    let r = http(url, Method::DELETE, "/subjects/s?permanent=true", None).await;
    assert_eq!((r.0, r.2["error_code"].clone()), (404, json!(40405)));
    assert_eq!(
        http(url, Method::DELETE, "/subjects/s", None).await.2,
        json!([2])
    );
    assert_eq!(http(url, Method::GET, "/subjects", None).await.2, json!([]));
    assert_eq!(
        http(url, Method::GET, "/subjects?deleted=true", None)
            .await
            .2,
        json!(["s"])
    );
    let r = http(url, Method::DELETE, "/subjects/s", None).await;
    assert_eq!((r.0, r.2["error_code"].clone()), (404, json!(40404)));
    // Registering a soft-deleted schema again: same id, a new version.
    assert_eq!(register(url, "s", &v2).await.1["id"], 2);
    assert_eq!(
        http(url, Method::GET, "/subjects/s/versions", None).await.2,
        json!([3])
    );
    assert_eq!(
        http(url, Method::DELETE, "/subjects/s", None).await.2,
        json!([3])
    );
    assert_eq!(
        http(url, Method::DELETE, "/subjects/s?permanent=true", None)
            .await
            .2,
        json!([2, 3])
    );
    assert_eq!(
        http(url, Method::GET, "/subjects?deleted=true", None)
            .await
            .2,
        json!([])
    );
    assert_eq!(
        http(url, Method::DELETE, "/subjects/s", None).await.2["error_code"],
        40401
    );
    // A new schema after everything was deleted never takes an old id.
    let v3 = user(json!([{"name": "other", "type": "string"}]));
    assert_eq!(register(url, "t", &v3).await.1["id"], 3);
    server.stop().await;
}

/// (level, old versions, a compatible next version, an incompatible next version)
fn cases() -> Vec<(&'static str, Vec<String>, String, String)> {
    let id = json!({"name": "id", "type": "int"});
    let name = json!({"name": "name", "type": "string"});
    let name_default = json!({"name": "name", "type": "string", "default": "?"});
    let age = json!({"name": "age", "type": "int"});
    let age_default = json!({"name": "age", "type": "int", "default": 0});
    vec![
        // BACKWARD: the new schema reads the latest's data. Adding a field with a default is
        // fine, one without a default is not.
        (
            "BACKWARD",
            vec![user(json!([id, name]))],
            user(json!([id, name, age_default])),
            user(json!([id, name, age])),
        ),
        // BACKWARD_TRANSITIVE: v2 removed `name`; bringing it back as an int reads v2's data
        // (it has a default) but not v1's, where it was a string.
        (
            "BACKWARD_TRANSITIVE",
            vec![user(json!([id, name])), user(json!([id]))],
            user(json!([id, name_default])),
            user(json!([id, {"name": "name", "type": "int", "default": 0}])),
        ),
        // FORWARD: the latest schema reads the new one's data. Adding any field is fine;
        // removing a field the old reader has no default for is not.
        (
            "FORWARD",
            vec![user(json!([id, name]))],
            user(json!([id, name, age])),
            user(json!([id])),
        ),
        // FORWARD_TRANSITIVE: v2 gave `name` a default, so v2 reads data without it, v1 does not.
        (
            "FORWARD_TRANSITIVE",
            vec![user(json!([id, name])), user(json!([id, name_default]))],
            user(json!([id, name_default, age])),
            user(json!([id])),
        ),
        // FULL: both ways: only fields with defaults come and go.
        (
            "FULL",
            vec![user(json!([id, name]))],
            user(json!([id, name, age_default])),
            user(json!([id, name, age])),
        ),
        (
            "FULL_TRANSITIVE",
            vec![user(json!([id, name])), user(json!([id, name_default]))],
            user(json!([id, name_default, age_default])),
            user(json!([id])),
        ),
        // NONE: anything.
        (
            "NONE",
            vec![user(json!([id]))],
            user(json!([{"name": "id", "type": "string"}])),
            String::new(),
        ),
    ]
}

#[tokio::test]
async fn each_compatibility_level_accepts_compatible_and_refuses_incompatible_avro_changes() {
    let dir = Dir::new();
    let server = Server::start(&dir.db()).await;
    let url = &server.url;
    for (level, olds, good, bad) in cases() {
        let subject = format!("level-{}", level.to_lowercase());
        let r = http(
            url,
            Method::PUT,
            &format!("/config/{subject}"),
            Some(json!({"compatibility": level})),
        )
        .await;
        assert_eq!(r.2, json!({"compatibility": level}));
        for old in &olds {
            let (status, body) = register(url, &subject, old).await;
            assert_eq!(status, 200, "{level}: {body}");
        }
        if !bad.is_empty() {
            let (status, body) = register(url, &subject, &bad).await;
            assert_eq!(
                (status, body["error_code"].clone()),
                (409, json!(409)),
                "{level}: {bad} → {body}"
            );
            // The non-transitive level would have let the same change through when the
            // latest version alone decides.
            if level.ends_with("_TRANSITIVE") {
                let base = level.trim_end_matches("_TRANSITIVE");
                let r = http(
                    url,
                    Method::PUT,
                    &format!("/config/{subject}"),
                    Some(json!({"compatibility": base})),
                )
                .await;
                assert_eq!(r.0, 200);
                let (s, _, b) = http(
                    url,
                    Method::POST,
                    &format!("/compatibility/subjects/{subject}/versions/latest"),
                    Some(json!({"schema": bad})),
                )
                .await;
                assert_eq!(
                    (s, b),
                    (200, json!({"is_compatible": true})),
                    "{base} vs latest only"
                );
                http(
                    url,
                    Method::PUT,
                    &format!("/config/{subject}"),
                    Some(json!({"compatibility": level})),
                )
                .await;
            }
        }
        let (status, body) = register(url, &subject, &good).await;
        assert_eq!(status, 200, "{level}: {good} → {body}");
        let versions = http(
            url,
            Method::GET,
            &format!("/subjects/{subject}/versions"),
            None,
        )
        .await
        .2;
        assert_eq!(
            versions.as_array().unwrap().len(),
            olds.len() + 1,
            "{level}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn verbose_compatibility_messages_name_the_problem() {
    let dir = Dir::new();
    let server = Server::start(&dir.db()).await;
    let url = &server.url;
    register(url, "s", &user(json!([{"name": "id", "type": "int"}]))).await;
    let added = user(json!([{"name": "id", "type": "int"}, {"name": "age", "type": "int"}]));
    let (status, _, body) = http(
        url,
        Method::POST,
        "/compatibility/subjects/s/versions/latest?verbose=true",
        Some(json!({"schema": added})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["is_compatible"], false);
    let messages: Vec<String> = serde_json::from_value(body["messages"].clone()).unwrap();
    assert!(
        messages[0].contains("READER_FIELD_MISSING_DEFAULT_VALUE"),
        "{messages:?}"
    );
    assert!(messages[0].contains("'age'"), "{messages:?}");
    assert!(
        messages.iter().any(|m| m == "{oldSchemaVersion: 1}"),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m == "{compatibility: 'BACKWARD'}"),
        "{messages:?}"
    );
    // Without verbose: no messages.
    let (_, _, body) = http(
        url,
        Method::POST,
        "/compatibility/subjects/s/versions/1",
        Some(json!({"schema": added})),
    )
    .await;
    assert_eq!(body, json!({"is_compatible": false}));
    // Against all versions, and through the client.
    let c = client(url);
    let report = c
        .test_compatibility("s", None, &avro(&added))
        .await
        .unwrap();
    assert!(!report.is_compatible);
    assert!(report.messages[0].contains("READER_FIELD_MISSING_DEFAULT_VALUE"));
    let fine = user(json!([{"name": "id", "type": "long"}]));
    let report = c
        .test_compatibility("s", Some(VersionSpec::Latest), &avro(&fine))
        .await
        .unwrap();
    assert!(report.is_compatible, "{:?}", report.messages);
    // Against a version that does not exist: 40402; a subject that has none: compatible.
    let err = c
        .test_compatibility("s", Some(VersionSpec::Number(5)), &avro(&fine))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(40402));
    assert!(
        c.test_compatibility("empty", Some(VersionSpec::Latest), &avro(&fine))
            .await
            .unwrap()
            .is_compatible
    );
    server.stop().await;
}

#[tokio::test]
async fn configs_global_and_per_subject() {
    let dir = Dir::new();
    let server = Server::start(&dir.db()).await;
    let url = &server.url;
    assert_eq!(
        http(url, Method::GET, "/config", None).await.2,
        json!({"compatibilityLevel": "BACKWARD"})
    );
    assert_eq!(
        http(
            url,
            Method::PUT,
            "/config",
            Some(json!({"compatibility": "forward"}))
        )
        .await
        .2,
        json!({"compatibility": "FORWARD"})
    );
    assert_eq!(
        http(url, Method::GET, "/config", None).await.2,
        json!({"compatibilityLevel": "FORWARD"})
    );
    assert_eq!(
        http(url, Method::GET, "/config/a?defaultToGlobal=true", None)
            .await
            .2,
        json!({"compatibilityLevel": "FORWARD"})
    );
    http(
        url,
        Method::PUT,
        "/config/a",
        Some(json!({"compatibility": "NONE"})),
    )
    .await;
    assert_eq!(
        http(url, Method::GET, "/config/a", None).await.2,
        json!({"compatibilityLevel": "NONE"})
    );
    // The subject's level applies to it: an incompatible change passes under NONE in `a`
    // and fails under the global FORWARD in `b`.
    let v1 = user(json!([{"name": "id", "type": "int"}, {"name": "name", "type": "string"}]));
    let v2 = user(json!([{"name": "id", "type": "int"}]));
    for s in ["a", "b"] {
        assert_eq!(register(url, s, &v1).await.0, 200);
    }
    assert_eq!(register(url, "a", &v2).await.0, 200);
    assert_eq!(register(url, "b", &v2).await.0, 409);
    assert_eq!(
        http(url, Method::DELETE, "/config/a", None).await.2,
        json!({"compatibilityLevel": "NONE"})
    );
    assert_eq!(
        http(url, Method::GET, "/config/a", None).await.2["error_code"],
        40408
    );
    assert_eq!(
        http(url, Method::DELETE, "/config", None).await.2,
        json!({"compatibilityLevel": "FORWARD"})
    );
    assert_eq!(
        http(url, Method::GET, "/config", None).await.2,
        json!({"compatibilityLevel": "BACKWARD"})
    );
    // The client reads and writes the same.
    let c = client(url);
    c.set_compatibility(Some("b"), Compatibility::Full)
        .await
        .unwrap();
    assert_eq!(
        c.compatibility(Some("b")).await.unwrap(),
        Compatibility::Full
    );
    assert_eq!(
        c.compatibility(Some("zzz")).await.unwrap(),
        Compatibility::Backward
    );
    server.stop().await;
}

#[tokio::test]
async fn a_restart_keeps_ids_versions_deletes_and_configs() {
    let dir = Dir::new();
    let server = Server::start(&dir.db()).await;
    let url = server.url.clone();
    let v1 = user(json!([{"name": "id", "type": "int"}]));
    let v2 = user(json!([{"name": "id", "type": "long"}]));
    assert_eq!(register(&url, "s", &v1).await.1["id"], 1);
    assert_eq!(register(&url, "s", &v2).await.1["id"], 2);
    assert_eq!(register(&url, "t", &v2).await.1["id"], 2);
    http(&url, Method::DELETE, "/subjects/t", None).await;
    http(
        &url,
        Method::PUT,
        "/config/s",
        Some(json!({"compatibility": "FULL"})),
    )
    .await;
    http(
        &url,
        Method::PUT,
        "/config",
        Some(json!({"compatibility": "NONE"})),
    )
    .await;
    server.stop().await;

    let server = Server::start(&dir.db()).await;
    let url = &server.url;
    assert_eq!(
        http(url, Method::GET, "/subjects", None).await.2,
        json!(["s"])
    );
    assert_eq!(
        http(url, Method::GET, "/subjects/s/versions", None).await.2,
        json!([1, 2])
    );
    assert_eq!(
        http(url, Method::GET, "/subjects/t/versions?deleted=true", None)
            .await
            .2,
        json!([1])
    );
    assert_eq!(
        http(url, Method::GET, "/subjects/s/versions/2", None)
            .await
            .2["id"],
        2
    );
    assert_eq!(
        http(url, Method::GET, "/config/s", None).await.2,
        json!({"compatibilityLevel": "FULL"})
    );
    assert_eq!(
        http(url, Method::GET, "/config", None).await.2,
        json!({"compatibilityLevel": "NONE"})
    );
    // Identity still holds after the restart, and new ids continue.
    assert_eq!(register(url, "s", &v1).await.1["id"], 1);
    assert_eq!(register(url, "u", &v2).await.1["id"], 2);
    let v3 =
        user(json!([{"name": "id", "type": "long"}, {"name": "x", "type": "int", "default": 1}]));
    assert_eq!(register(url, "s", &v3).await.1["id"], 3);
    assert_eq!(
        http(url, Method::GET, "/subjects/s/versions", None).await.2,
        json!([1, 2, 3])
    );
    server.stop().await;
}

#[tokio::test]
async fn avro_references_resolve_named_types() {
    let dir = Dir::new();
    let server = Server::start(&dir.db()).await;
    let url = &server.url;
    let address = json!({"type": "record", "name": "Address", "namespace": "test", "fields": [{"name": "city", "type": "string"}]}).to_string();
    assert_eq!(register(url, "address", &address).await.1["id"], 1);
    let with_ref = user(json!([{"name": "home", "type": "test.Address"}]));
    // Without the reference the type is unknown.
    assert_eq!(
        register(url, "user", &with_ref).await.1["error_code"],
        42201
    );
    let refs = json!([{"name": "test.Address", "subject": "address", "version": 1}]);
    let (status, _, body) = http(
        url,
        Method::POST,
        "/subjects/user/versions",
        Some(json!({"schema": with_ref, "references": refs})),
    )
    .await;
    assert_eq!((status, body), (200, json!({"id": 2})));
    let by_id = http(url, Method::GET, "/schemas/ids/2", None).await.2;
    assert_eq!(by_id["references"], refs);
    assert_eq!(
        http(
            url,
            Method::GET,
            "/subjects/address/versions/1/referencedby",
            None
        )
        .await
        .2,
        json!([2])
    );
    // A referenced schema cannot be deleted.
    let r = http(url, Method::DELETE, "/subjects/address/versions/1", None).await;
    assert_eq!(r.2["error_code"], 42206);
    // A reference to nothing is an invalid schema.
    let (status, _, body) = http(
        url,
        Method::POST,
        "/subjects/user2/versions",
        Some(json!({"schema": with_ref, "references": [{"name": "test.Address", "subject": "address", "version": 9}]})),
    )
    .await;
    assert_eq!((status, body["error_code"].clone()), (422, json!(42201)));
    // The client sees the references.
    let s = client(url).schema_by_id(2).await.unwrap();
    assert_eq!(s.references.len(), 1);
    assert_eq!(s.references[0].subject, "address");
    server.stop().await;
}

#[tokio::test]
async fn the_client_registers_caches_fetches_and_authenticates() {
    let dir = Dir::new();
    let auth = ServerAuth {
        basic: Some(("alice".into(), SecretString::from("pa55word-xyz"))),
        bearer: Some(SecretString::from("token-abc-123")),
    };
    let server = Server::start_with(&dir.db(), auth).await;
    let url = server.url.clone();
    let v1 = avro(&user(json!([{"name": "id", "type": "int"}])));

    // No credentials: 401, fatal, not retried.
    let anonymous = client(&url);
    let err = anonymous.register("s", &v1).await.unwrap_err();
    assert_eq!((err.code(), err.class()), (Some(401), ErrorClass::Fatal));
    // Wrong password: refused, and the password is nowhere in the error.
    let mut config = RegistryClientConfig::new(&url);
    config.auth = ClientAuth::Basic {
        user: "alice".into(),
        password: SecretString::from("wrong-secret-777"),
    };
    let wrong = RegistryClient::new(config).unwrap();
    let err = wrong.register("s", &v1).await.unwrap_err();
    assert_eq!(err.code(), Some(401));
    assert!(!format!("{err} {err:?} {wrong:?}").contains("wrong-secret-777"));

    // Basic auth in the URL.
    let with_url = client(&url.replace("http://", "http://alice:pa55word-xyz@"));
    let id = with_url.register("s", &v1).await.unwrap();
    assert_eq!(id, 1);
    // Bearer.
    let mut config = RegistryClientConfig::new(&url);
    config.retry = fast_retries();
    config.auth = ClientAuth::Bearer(SecretString::from("token-abc-123"));
    let bearer = RegistryClient::new(config).unwrap();
    assert_eq!(bearer.register("s", &v1).await.unwrap(), 1);
    assert_eq!(
        bearer.schema_by_id(1).await.unwrap().schema_type,
        tributary_registry::SchemaType::Avro
    );
    let latest = bearer.version("s", VersionSpec::Latest).await.unwrap();
    assert_eq!(
        (latest.id, latest.version, latest.subject.as_str()),
        (1, 1, "s")
    );
    assert_eq!(bearer.lookup("s", &v1).await.unwrap().version, 1);
    assert_eq!(bearer.subjects(false).await.unwrap(), ["s"]);
    assert_eq!(bearer.versions("s").await.unwrap(), [1]);

    // Cached: after the server is gone, a known (subject, schema) and a known id still answer.
    server.stop().await;
    assert_eq!(bearer.register("s", &v1).await.unwrap(), 1);
    assert_eq!(bearer.schema_by_id(1).await.unwrap().schema, v1.schema);
    // Unknown ones fail with a transient network error after the retries.
    let err = bearer.schema_by_id(2).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient, "{err}");
    assert!(err.to_string().contains("refused"), "{err}");
    assert!(!format!("{err:?}").contains("token-abc-123"));
}

#[tokio::test]
async fn the_client_retries_transient_errors_and_stops_on_others() {
    use axum::http::StatusCode;
    use axum::routing::get;
    let calls = Arc::new(AtomicUsize::new(0));
    let c2 = calls.clone();
    let app = axum::Router::new().route(
        "/schemas/ids/{id}",
        get(move |axum::extract::Path(id): axum::extract::Path<u32>| {
            let calls = c2.clone();
            async move {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                if id == 404 {
                    return (
                        StatusCode::NOT_FOUND,
                        r#"{"error_code":40403,"message":"Schema 404 not found."}"#.to_string(),
                    );
                }
                if n < 2 {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        r#"{"error_code":50003,"message":"busy"}"#.to_string(),
                    )
                } else {
                    (StatusCode::OK, r#"{"schema":"\"string\""}"#.to_string())
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let c = client(&url);
    assert_eq!(c.schema_by_id(7).await.unwrap().schema, "\"string\"");
    assert_eq!(calls.load(Ordering::SeqCst), 3, "two 503s, then success");
    let err = c.schema_by_id(404).await.unwrap_err();
    assert_eq!(err.code(), Some(40403));
    assert_eq!(calls.load(Ordering::SeqCst), 4, "a 404 is not retried");
}

async fn register_typed(url: &str, subject: &str, ty: &str, schema: &str) -> (u16, Value) {
    let (s, _, b) = http(
        url,
        Method::POST,
        &format!("/subjects/{subject}/versions"),
        Some(json!({"schema": schema, "schemaType": ty})),
    )
    .await;
    (s, b)
}

#[tokio::test]
async fn protobuf_text_schemas_field_reuse_is_caught_transitively() {
    let dir = Dir::new();
    let server = Server::start(&dir.db()).await;
    let url = &server.url;
    let proto =
        |fields: &str| format!("syntax = \"proto3\";\npackage shop;\nmessage Order {{ {fields} }}");
    let v1 = proto("int64 id = 1; string note = 2;");
    assert_eq!(
        register_typed(url, "p", "PROTOBUF", &v1).await,
        (200, json!({"id": 1}))
    );
    let got = http(url, Method::GET, "/subjects/p/versions/1", None)
        .await
        .2;
    assert_eq!(
        (got["schemaType"].as_str(), got["schema"].as_str()),
        (Some("PROTOBUF"), Some(v1.as_str()))
    );
    // Field 2 removed: compatible.
    let v2 = proto("int64 id = 1;");
    assert_eq!(register_typed(url, "p", "PROTOBUF", &v2).await.0, 200);
    // Field 2 reused as a double: compatible with v2 (the latest), not with v1.
    let v3 = proto("int64 id = 1; double note = 2;");
    let r = http(
        url,
        Method::POST,
        "/compatibility/subjects/p/versions/latest",
        Some(json!({"schema": v3, "schemaType": "PROTOBUF"})),
    )
    .await;
    assert_eq!(r.2, json!({"is_compatible": true}));
    http(
        url,
        Method::PUT,
        "/config/p",
        Some(json!({"compatibility": "BACKWARD_TRANSITIVE"})),
    )
    .await;
    let (status, body) = register_typed(url, "p", "PROTOBUF", &v3).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("FIELD_SCALAR_KIND_CHANGED"),
        "{body}"
    );
    // Not a .proto file: 42201.
    let (status, body) = register_typed(url, "q", "PROTOBUF", "message {").await;
    assert_eq!((status, body["error_code"].clone()), (422, json!(42201)));
    server.stop().await;
}

#[tokio::test]
async fn json_schemas_follow_content_model_rules() {
    let dir = Dir::new();
    let server = Server::start(&dir.db()).await;
    let url = &server.url;
    let open = |props: Value| json!({"type": "object", "properties": props}).to_string();
    let v1 = open(json!({"a": {"type": "string"}}));
    assert_eq!(
        register_typed(url, "j", "JSON", &v1).await,
        (200, json!({"id": 1}))
    );
    // Open content model: adding a typed property is not backward compatible.
    let added = open(json!({"a": {"type": "string"}, "b": {"type": "integer"}}));
    let (status, _, body) = http(
        url,
        Method::POST,
        "/compatibility/subjects/j/versions/latest?verbose=true",
        Some(json!({"schema": added, "schemaType": "JSON"})),
    )
    .await;
    assert_eq!((status, body["is_compatible"].clone()), (200, json!(false)));
    assert!(
        body["messages"][0]
            .as_str()
            .unwrap()
            .contains("PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL"),
        "{body}"
    );
    // Removing one is.
    assert_eq!(
        register_typed(url, "j", "JSON", &open(json!({}))).await.0,
        200
    );
    let got = http(url, Method::GET, "/schemas/ids/2", None).await.2;
    assert_eq!(got["schemaType"], "JSON");
    assert_eq!(
        register_typed(url, "k", "JSON", "[1, 2]").await.1["error_code"],
        42201
    );
    server.stop().await;
}

/// A store whose writes fail after `ok` of them.
struct FailingStore {
    ok: AtomicUsize,
}

impl tributary_registry::RegistryStore for FailingStore {
    fn load(
        &self,
    ) -> Result<tributary_registry::store::Snapshot, tributary_registry::store::StoreError> {
        Ok(Default::default())
    }
    fn put_schema(
        &self,
        _: &tributary_registry::SchemaRecord,
    ) -> Result<(), tributary_registry::store::StoreError> {
        self.write()
    }
    fn remove_schema(&self, _: &str, _: u32) -> Result<(), tributary_registry::store::StoreError> {
        self.write()
    }
    fn put_config(
        &self,
        _: Option<&str>,
        _: Option<Compatibility>,
    ) -> Result<(), tributary_registry::store::StoreError> {
        self.write()
    }
}

impl FailingStore {
    fn write(&self) -> Result<(), tributary_registry::store::StoreError> {
        if self
            .ok
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            Ok(())
        } else {
            Err(tributary_registry::store::StoreError::Io {
                path: "test".into(),
                message: "disk full".into(),
            })
        }
    }
}

#[tokio::test]
async fn a_store_failure_answers_50001_and_changes_nothing() {
    let registry = Arc::new(
        tributary_registry::Registry::open(Box::new(FailingStore {
            ok: AtomicUsize::new(1),
        }))
        .unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(tributary_registry::serve(
        listener,
        registry,
        ServerAuth::default(),
        async move {
            let _ = rx.await;
        },
    ));
    let v1 = user(json!([{"name": "id", "type": "int"}]));
    assert_eq!(register(&url, "s", &v1).await, (200, json!({"id": 1})));
    let v2 = user(json!([{"name": "id", "type": "long"}]));
    let (status, body) = register(&url, "s", &v2).await;
    assert_eq!(
        (status, body["error_code"].clone()),
        (500, json!(50001)),
        "{body}"
    );
    assert!(body["message"].as_str().unwrap().contains("disk full"));
    // Nothing changed in memory: one version, and the next id is still 2.
    assert_eq!(
        http(&url, Method::GET, "/subjects/s/versions", None)
            .await
            .2,
        json!([1])
    );
    let r = http(
        &url,
        Method::PUT,
        "/config",
        Some(json!({"compatibility": "NONE"})),
    )
    .await;
    assert_eq!(r.2["error_code"], 50001);
    assert_eq!(
        http(&url, Method::GET, "/config", None).await.2,
        json!({"compatibilityLevel": "BACKWARD"})
    );
    // The client classifies it as transient (retried; here it keeps failing).
    let err = client(&url).register("s", &avro(&v2)).await.unwrap_err();
    assert_eq!(
        (err.code(), err.class()),
        (Some(50001), ErrorClass::Transient)
    );
    let _ = tx.send(());
    task.await.unwrap().unwrap();
}
