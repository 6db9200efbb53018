//! What the SQS and Kinesis tests share: the moto endpoints (`scripts/moto-server`),
//! a signed test-side client (the library's own signing), the process-wide fault
//! proxy the conformance streams go through, and an IAM user on the moto instance
//! that checks signatures.
#![allow(dead_code)]

use crate::fault_proxy::{Fault, FaultProxy};
use outboxer::stream::aws::{AwsClient, Credentials, Service};
use std::sync::OnceLock;

/// moto without signature checks (OUTBOXER_AWS_URL, default 127.0.0.1:4566).
pub fn endpoint() -> String {
    std::env::var("OUTBOXER_AWS_URL").unwrap_or_else(|_| "http://127.0.0.1:4566".into())
}

/// moto with signature checks (OUTBOXER_AWS_AUTH_URL, default 127.0.0.1:4567).
pub fn auth_endpoint() -> String {
    std::env::var("OUTBOXER_AWS_AUTH_URL").unwrap_or_else(|_| "http://127.0.0.1:4567".into())
}

fn host_of(url: &str) -> String {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

/// `sqs://test:test@us-east-1?endpoint=..` (moto takes any key without auth).
pub fn url(scheme: &str, endpoint: &str) -> String {
    format!("{scheme}://test:test@us-east-1?endpoint={endpoint}")
}

/// A signed client straight to moto (no proxy) for setup and consumers.
pub fn client(service: Service) -> AwsClient {
    let scheme = match service {
        Service::Sqs => "sqs",
        Service::Kinesis => "kinesis",
    };
    AwsClient::connect(&url(scheme, &endpoint()), service).expect("moto client")
}

/// The proxy in front of moto that the conformance streams use; `cut_connections`
/// makes it drop connections.
pub fn shared_proxy() -> &'static FaultProxy {
    static PROXY: OnceLock<FaultProxy> = OnceLock::new();
    PROXY.get_or_init(|| FaultProxy::start(&host_of(&endpoint())))
}

/// A proxy of its own for one fault test.
pub fn own_proxy() -> FaultProxy {
    FaultProxy::start(&host_of(&endpoint()))
}

/// Drops the next connections of the shared proxy: more than one call's retries,
/// so that at least one publish fails before delivery resumes.
pub fn cut_shared_proxy() {
    shared_proxy().inject(std::iter::repeat_n(Fault::Drop, 6));
}

/// Credentials of an IAM user with an allow-all policy on the signature-checking
/// moto instance. moto knows only keys it issued: the user is made with three
/// unauthenticated calls granted through `/moto-api/reset-auth`.
pub fn signer() -> &'static Credentials {
    static SIGNER: OnceLock<Credentials> = OnceLock::new();
    SIGNER.get_or_init(|| {
        let base = auth_endpoint();
        let agent = ureq::Agent::new_with_defaults();
        agent
            .post(&format!("{base}/moto-api/reset-auth"))
            .header("content-type", "text/plain")
            .send("3")
            .expect("moto reset-auth (scripts/moto-server start)");
        let user = crate::conformance::unique("signer");
        let policy = "%7B%22Version%22%3A%222012-10-17%22%2C%22Statement%22%3A%5B%7B%22Effect%22%3A%22Allow%22%2C%22Action%22%3A%22*%22%2C%22Resource%22%3A%22*%22%7D%5D%7D";
        let mut answers = Vec::new();
        for form in [
            format!("Action=CreateUser&UserName={user}&Version=2010-05-08"),
            format!("Action=PutUserPolicy&UserName={user}&PolicyName=all&PolicyDocument={policy}&Version=2010-05-08"),
            format!("Action=CreateAccessKey&UserName={user}&Version=2010-05-08"),
        ] {
            let mut resp = agent
                .post(&format!("{base}/"))
                .header("content-type", "application/x-www-form-urlencoded")
                // Routes the call to IAM; not checked for these three calls.
                .header(
                    "authorization",
                    "AWS4-HMAC-SHA256 Credential=x/20260101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=x",
                )
                .send(form.as_str())
                .expect("IAM call");
            answers.push(resp.body_mut().read_to_string().expect("IAM answer"));
        }
        let xml = &answers[2];
        let field = |tag: &str| {
            let open = format!("<{tag}>");
            let start = xml.find(&open).expect(tag) + open.len();
            let end = xml[start..].find('<').expect(tag) + start;
            xml[start..end].to_string()
        };
        Credentials::new(field("AccessKeyId"), field("SecretAccessKey"), None)
    })
}

/// A credentials provider the test switches from a wrong secret to the right one.
#[derive(Debug)]
pub struct Switchable(pub std::sync::Mutex<Credentials>);

impl outboxer::stream::aws::CredentialsProvider for Switchable {
    fn credentials(&self) -> outboxer::Result<Credentials> {
        Ok(self.0.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// A credentials provider that always fails (no instance profile, vault down, ...).
#[derive(Debug)]
pub struct FailingProvider;

impl outboxer::stream::aws::CredentialsProvider for FailingProvider {
    fn credentials(&self) -> outboxer::Result<Credentials> {
        Err(outboxer::Error::Config {
            field: "credentials",
            reason: "the vault is sealed".into(),
        })
    }
}

/// A client with the signer's credentials on the signature-checking moto.
pub fn signed_admin(service: Service) -> AwsClient {
    let signer = signer();
    let scheme = match service {
        Service::Sqs => "sqs",
        Service::Kinesis => "kinesis",
    };
    AwsClient::connect(
        &format!(
            "{scheme}://{}:{}@us-east-1?endpoint={}",
            signer.access_key_id(),
            signer.secret_access_key().replace('/', "%2F"),
            auth_endpoint()
        ),
        service,
    )
    .expect("client")
}
