//! Answers for everything no route handles, so that even a wrong path or method gets a
//! problem+json body, and a safety net that turns any other bare error into one.

use actix_web::dev::ServiceResponse;
use actix_web::http::header;
use actix_web::middleware::ErrorHandlerResponse;
use actix_web::HttpResponse;

use crate::error::ApiError;
use crate::problem::{Problem, CONTENT_TYPE};

pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::RouteNotFound)
}

/// A resource's default service: the path exists but not with this method.
pub fn method_not_allowed(allow: &'static str) -> actix_web::Route {
    actix_web::web::route()
        .to(move || async move { Err::<HttpResponse, _>(ApiError::MethodNotAllowed { allow }) })
}

/// Rewrites any 4xx/5xx that is not already problem+json (actix's own extractor and routing
/// errors) into a problem for that status.
pub fn problem_for_bare_errors<B>(
    res: ServiceResponse<B>,
) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let is_problem = res
        .response()
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(CONTENT_TYPE.as_bytes()));
    if is_problem {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let status = res.status();
    let problem = Problem::for_status(status);
    let (req, res) = res.into_parts();
    let mut new = problem.into_response();
    for (name, value) in res.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            new.headers_mut().append(name.clone(), value.clone());
        }
    }
    Ok(ErrorHandlerResponse::Response(
        ServiceResponse::new(req, new).map_into_right_body(),
    ))
}
