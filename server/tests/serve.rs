//! `kvpress serve` over loopback with the default model: answers equal the library's
//! one-at-a-time answers, concurrent answers are batched and still equal, contexts survive a
//! restart and memory eviction, and bad requests get OpenAI error objects.

mod common;

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{get, metric, needle_text, post, request};
use kvpress::{AnswerOptions, Pipeline};
use serde_json::{json, Value};

const QUESTION: &str = "What is the special magic number for ocean mentioned in the provided text?";

fn knorm() -> Value {
    json!({"press": "knorm", "compression_ratio": 0.75})
}

fn chat(model: &str, context_id: &str, question: &str, max_tokens: usize) -> Value {
    json!({
        "model": model,
        "context_id": context_id,
        "messages": [{"role": "user", "content": question}],
        "temperature": 0,
        "max_tokens": max_tokens,
    })
}

fn model_id(address: std::net::SocketAddr) -> String {
    get(address, "/v1/models").json()["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn answer_text(response: &common::Response) -> String {
    assert_eq!(response.status, 200, "{}", response.body);
    response.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The library's answers to `questions` from `text` compressed by `press`, one at a time.
fn one_at_a_time(text: &str, press: &Value, questions: &[&str], max_tokens: usize) -> Vec<String> {
    let pipe = Pipeline::from_loaded(common::model());
    let press = kvpress::core::press::press_from_value(press.clone()).unwrap();
    let context = pipe.compress(text, press.as_ref()).unwrap();
    questions
        .iter()
        .map(|q| {
            let options = AnswerOptions {
                max_new_tokens: max_tokens,
                ..Default::default()
            };
            context.ask_with(q, options).unwrap().text
        })
        .collect()
}

#[test]
fn stored_contexts_answer_as_the_library_does_alone_and_in_batches() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(common::options(dir.path()));
    let address = server.address();
    let model = model_id(address);
    let created = post(
        address,
        "/v1/contexts",
        &json!({"text": needle_text(), "press": knorm()}),
    );
    assert_eq!(created.status, 200, "{}", created.body);
    let info = created.json();
    let id = info["id"].as_str().unwrap().to_string();
    assert_eq!(info["context_tokens"], 1175);
    let kept = info["kept_fraction"].as_f64().unwrap();
    assert!((kept - 0.249).abs() < 0.001, "{kept}");
    assert_eq!(info["kv_bytes"], 13_501_440, "the README's 12.88 MiB");

    let questions = [
        QUESTION,
        "What is the text about?",
        "Which number is mentioned for ocean? Answer with the number only.",
        "Summarise the text in one sentence.",
        "Is there a magic number in the text?",
        "What is the special magic number for ocean?",
    ];
    let expected = one_at_a_time(&needle_text(), &knorm(), &questions, 48);
    assert!(expected[0].contains("7340912"), "{}", expected[0]);
    // Alone.
    assert_eq!(
        answer_text(&post(
            address,
            "/v1/chat/completions",
            &chat(&model, &id, questions[0], 48)
        )),
        expected[0]
    );
    // Together: every answer equals its one-at-a-time answer, and steps held several answers.
    let handles: Vec<_> = questions
        .iter()
        .map(|q| {
            let body = chat(&model, &id, q, 48);
            thread::spawn(move || answer_text(&post(address, "/v1/chat/completions", &body)))
        })
        .collect();
    let answers: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(answers, expected);
    assert!(
        metric(address, "kvpress_batch_size_max") >= 2.0,
        "no step decoded two answers"
    );
    // Places are given back when the decoding loop drops a finished answer, just after its
    // client got the last event.
    let start = Instant::now();
    while metric(address, "kvpress_in_flight") > 0.0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "answers kept their places"
        );
        thread::sleep(Duration::from_millis(20));
    }
    server.shutdown();
}

#[test]
fn streams_add_up_to_the_whole_answer_and_stop_sequences_cut_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(common::options(dir.path()));
    let address = server.address();
    let model = model_id(address);
    let body = |stream: bool, stop: Value| {
        json!({
            "model": model,
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "temperature": 0, "max_tokens": 30, "stream": stream, "stop": stop,
            "press": null,
        })
    };
    let whole = answer_text(&post(
        address,
        "/v1/chat/completions",
        &body(false, Value::Null),
    ));
    assert!(whole.contains("Paris"), "{whole}");
    let streamed = post(address, "/v1/chat/completions", &body(true, Value::Null));
    assert_eq!(streamed.status, 200);
    let events = streamed.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, whole);
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
    // A stop sequence ends the answer before it, streamed or not.
    let cut = answer_text(&post(
        address,
        "/v1/chat/completions",
        &body(false, json!(["Paris"])),
    ));
    assert_eq!(cut, whole[..whole.find("Paris").unwrap()]);
    let streamed = post(address, "/v1/chat/completions", &body(true, json!("Paris")));
    let text: String = streamed
        .events()
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(text, cut);
    // A text completion of a raw prompt, and its token budget.
    let completion = post(
        address,
        "/v1/completions",
        &json!({"model": model, "prompt": "One, two, three,", "max_tokens": 5, "temperature": 0}),
    );
    assert_eq!(completion.status, 200, "{}", completion.body);
    let json = completion.json();
    assert_eq!(json["object"], "text_completion");
    assert_eq!(json["usage"]["completion_tokens"], 5);
    assert_eq!(json["choices"][0]["finish_reason"], "length");
    server.shutdown();
}

#[test]
fn a_press_per_request_compresses_the_earlier_messages() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(common::options(dir.path()));
    let address = server.address();
    let body = json!({
        "model": model_id(address),
        "messages": [{"role": "user", "content": needle_text()}, {"role": "user", "content": QUESTION}],
        "press": knorm(), "temperature": 0, "max_tokens": 48,
    });
    let expected = one_at_a_time(&needle_text(), &knorm(), &[QUESTION], 48);
    assert_eq!(
        answer_text(&post(address, "/v1/chat/completions", &body)),
        expected[0]
    );
    server.shutdown();
}

#[test]
fn contexts_survive_a_restart_and_come_back_after_memory_eviction() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = common::options(dir.path());
    options.context_memory = 1; // every context but the newest leaves memory
    let server = common::start(options.clone());
    let address = server.address();
    let model = model_id(address);
    let texts = [needle_text(), needle_text().replace("7340912", "5551234")];
    let ids: Vec<String> = texts
        .iter()
        .map(|t| {
            let r = post(
                address,
                "/v1/contexts",
                &json!({"text": t, "press": knorm()}),
            );
            assert_eq!(r.status, 200, "{}", r.body);
            r.json()["id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(metric(address, "kvpress_contexts_in_memory"), 1.0);
    assert_eq!(metric(address, "kvpress_contexts_stored"), 2.0);
    let first = answer_text(&post(
        address,
        "/v1/chat/completions",
        &chat(&model, &ids[0], QUESTION, 32),
    ));
    assert!(first.contains("7340912"), "{first}");
    let list = get(address, "/v1/contexts").json();
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
    server.shutdown();

    let server = common::start(options);
    let address = server.address();
    let shown = get(address, &format!("/v1/contexts/{}", ids[1]));
    assert_eq!(shown.status, 200, "{}", shown.body);
    assert_eq!(shown.json()["context_tokens"], 1175);
    let second = answer_text(&post(
        address,
        "/v1/chat/completions",
        &chat(&model, &ids[1], QUESTION, 32),
    ));
    assert!(second.contains("5551234"), "{second}");
    let deleted = request(
        address,
        "DELETE",
        &format!("/v1/contexts/{}", ids[0]),
        None,
        &[],
    );
    assert_eq!(deleted.status, 200);
    assert_eq!(
        get(address, &format!("/v1/contexts/{}", ids[0])).status,
        404
    );
    assert_eq!(
        request(
            address,
            "DELETE",
            &format!("/v1/contexts/{}", ids[0]),
            None,
            &[]
        )
        .status,
        404
    );
    server.shutdown();
}

#[test]
fn bad_requests_get_openai_error_objects_and_do_not_disturb_others() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = common::options(dir.path());
    options.max_body_bytes = 4096;
    options.api_key = Some("sekret".to_string());
    let server = common::start(options);
    let address = server.address();
    let auth = [("Authorization", "Bearer sekret")];
    let send = |path: &str, body: &[u8]| request(address, "POST", path, Some(body), &auth);
    // The key.
    assert_eq!(get(address, "/v1/models").status, 401);
    assert_eq!(
        request(
            address,
            "GET",
            "/v1/models",
            None,
            &[("Authorization", "Bearer wrong!")]
        )
        .status,
        401
    );
    assert_eq!(get(address, "/health").status, 200);
    let model = request(address, "GET", "/v1/models", None, &auth).json()["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let chat = |extra: Value| {
        let mut body = json!({"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        send("/v1/chat/completions", body.to_string().as_bytes())
    };
    let cases: Vec<(common::Response, u16, &str)> = vec![
        (
            send("/v1/chat/completions", b"{not json"),
            400,
            "not valid JSON",
        ),
        (chat(json!({"max_tokens": "many"})), 400, "invalid type"),
        (
            chat(json!({"logit_bias": {}})),
            400,
            "unknown field `logit_bias`",
        ),
        (chat(json!({"n": 2})), 400, "only one answer"),
        (
            chat(json!({"max_tokens": 100000})),
            400,
            "--max-tokens-limit",
        ),
        (chat(json!({"temperature": 3})), 400, "[0, 2]"),
        (chat(json!({"model": "gpt-4o"})), 404, "this server serves"),
        (
            chat(json!({"context_id": "ctx-0000000000000000"})),
            404,
            "no context",
        ),
        (
            chat(json!({"context_id": "../etc/passwd"})),
            404,
            "no context",
        ),
        (
            chat(
                json!({"press": {"press": "no_such_press"}, "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}),
            ),
            400,
            "no_such_press",
        ),
        (
            chat(
                json!({"press": {"press": "knorm", "compression_ratio": 1.5}, "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}),
            ),
            400,
            "compression_ratio",
        ),
        (
            chat(json!({"messages": [{"role": "robot", "content": "a"}]})),
            400,
            "valid roles",
        ),
        (
            send("/v1/chat/completions", &vec![b' '; 10_000]),
            413,
            "larger than",
        ),
        (
            send(
                "/v1/contexts",
                br#"{"text": "", "press": {"press": "knorm"}}"#,
            ),
            400,
            "empty",
        ),
        (
            send(
                "/v1/contexts",
                br#"{"text": "abc", "press": {"press": "finch"}}"#,
            ),
            400,
            "question",
        ),
        (
            request(address, "GET", "/v1/nothing", None, &auth),
            404,
            "no such route",
        ),
    ];
    for (response, status, needle) in cases {
        assert_eq!(response.status, status, "{}", response.body);
        let message = response.error_message();
        assert!(message.contains(needle), "`{needle}` not in: {message}");
    }
    let fine = chat(json!({"temperature": 0}));
    assert_eq!(fine.status, 200, "{}", fine.body);
    server.shutdown();
}

#[test]
fn a_full_server_answers_429_and_a_client_that_leaves_frees_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = common::options(dir.path());
    options.max_batch = 1;
    options.max_queue = 0;
    let server = Arc::new(common::start(options));
    let address = server.address();
    let model = model_id(address);
    let long = json!({
        "model": model, "messages": [{"role": "user", "content": "Write a long story about the sea."}],
        "max_tokens": 400, "stream": true, "temperature": 0,
    });
    // A streaming client that reads the first bytes and goes away.
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    let body = long.to_string();
    use std::io::{Read, Write};
    write!(stream, "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut first = [0u8; 64];
    stream.read_exact(&mut first).unwrap();
    let busy = post(
        address,
        "/v1/chat/completions",
        &json!({"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}),
    );
    assert_eq!(busy.status, 429, "{}", busy.body);
    assert_eq!(busy.header("retry-after"), Some("1"));
    assert!(busy.error_message().contains("full"));
    drop(stream);
    let start = Instant::now();
    while metric(address, "kvpress_in_flight") > 0.0 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the abandoned answer kept its place"
        );
        thread::sleep(Duration::from_millis(50));
    }
    assert!(
        metric(address, "kvpress_tokens_generated_total") < 400.0,
        "the abandoned answer ran to its end"
    );
    let ok = post(
        address,
        "/v1/chat/completions",
        &json!({"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}),
    );
    assert_eq!(ok.status, 200, "{}", ok.body);
    Arc::try_unwrap(server).ok().unwrap().shutdown();
}

#[test]
fn quantized_head_wise_contexts_answer_as_the_library_does() {
    let adakv = json!({"press": "adakv", "inner": {"press": "snapkv", "compression_ratio": 0.5}});
    let q4 = || {
        let mut model = common::model();
        model.model.set_kv_storage("q4".parse().unwrap()).unwrap();
        model
    };
    let dir = tempfile::tempdir().unwrap();
    let server = kvpress_server::Server::start(q4(), common::options(dir.path())).unwrap();
    let address = server.address();
    let model = model_id(address);
    let created = post(
        address,
        "/v1/contexts",
        &json!({"text": needle_text(), "press": adakv}),
    );
    assert_eq!(created.status, 200, "{}", created.body);
    let id = created.json()["id"].as_str().unwrap().to_string();
    let pipe = Pipeline::from_loaded(q4());
    let press = kvpress::core::press::press_from_value(adakv.clone()).unwrap();
    let context = pipe.compress(&needle_text(), press.as_ref()).unwrap();
    assert_eq!(created.json()["kv_bytes"], context.kv_bytes().unwrap());
    let questions = [
        QUESTION,
        "What is the text about?",
        "Is there a magic number in the text?",
    ];
    let handles: Vec<_> = questions
        .iter()
        .map(|q| {
            let body = chat(&model, &id, q, 32);
            thread::spawn(move || answer_text(&post(address, "/v1/chat/completions", &body)))
        })
        .collect();
    for (handle, question) in handles.into_iter().zip(questions) {
        let options = AnswerOptions {
            max_new_tokens: 32,
            ..Default::default()
        };
        assert_eq!(
            handle.join().unwrap(),
            context.ask_with(question, options).unwrap().text
        );
    }
    server.shutdown();
}
