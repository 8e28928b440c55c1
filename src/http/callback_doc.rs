//! The callback the service sends, described in the API document as an OpenAPI 3.1 webhook:
//! a receiver's author (or a client generator) reads its body and headers where they read
//! the API's. The delivery code (`delivery::client`) is what sends it; this describes it.

use utoipa::openapi::path::{
    HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{ContentBuilder, PathsBuilder, Ref, Required, ResponseBuilder};

/// The headers of each callback: (name, whether always sent, what it holds).
const HEADERS: &[(&str, bool, &str)] = &[
    (
        "webhook-id",
        true,
        "The request's id, the same on every attempt: a receiver dedupes by it (Standard \
         Webhooks).",
    ),
    (
        "webhook-timestamp",
        true,
        "When this attempt started, in Unix seconds; the signature covers it.",
    ),
    (
        "webhook-signature",
        false,
        "`v1,<base64 HMAC-SHA256 of \"{webhook-id}.{webhook-timestamp}.{body}\">`, one per \
         secret of APP_CALLBACK_SIGNING_SECRET, space-separated; absent when no secret is set \
         (Standard Webhooks).",
    ),
    ("X-Request-ID", true, "The request's id, as in the body."),
    (
        "X-Attempt",
        true,
        "This attempt's number, from 1, counting every attempt the request has had.",
    ),
];

/// The `webhooks` of the API document: the callback POSTed to each async request's
/// `callback_url`.
pub fn webhooks() -> utoipa::openapi::Paths {
    let mut operation = OperationBuilder::new()
        .operation_id(Some("callback"))
        .tag("work")
        .summary(Some("The result, POSTed to the request's callback_url"))
        .description(Some(
            "Sent once an async request's work is done, to its `callback_url`, with the same \
             body on every attempt. Any 2xx answer is success; anything else, a timeout or a \
             connection error is retried with backoff (a `Retry-After` is honoured) until the \
             retries run out (`callback_failed`). Redirects are not followed.",
        ))
        .request_body(Some(
            RequestBodyBuilder::new()
                .required(Some(Required::True))
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("CallbackPayload")))
                        .build(),
                )
                .build(),
        ))
        .response(
            "2XX",
            ResponseBuilder::new().description("Delivered: no more attempts"),
        )
        .response(
            "default",
            ResponseBuilder::new()
                .description("Not delivered: retried with backoff while retries remain"),
        );
    for (name, always, description) in HEADERS {
        operation = operation.parameter(
            ParameterBuilder::new()
                .name(*name)
                .parameter_in(ParameterIn::Header)
                .required(if *always {
                    Required::True
                } else {
                    Required::False
                })
                .description(Some(*description))
                .schema(Some(ObjectBuilder::new().schema_type(Type::String))),
        );
    }
    PathsBuilder::new()
        .path("callback", PathItem::new(HttpMethod::Post, operation))
        .build()
}
