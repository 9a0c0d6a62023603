//! A real S3-compatible server on loopback (moto's `moto_server`, from
//! PyPI, installed by `scripts/test` into `target/s3-venv`), with buckets
//! made and objects changed through boto3 as an operator (or an intruder
//! with the bucket's credentials) would.

use super::*;

/// The venv `scripts/test` makes (overridden by `AUDITLB_S3_VENV`).
fn venv() -> std::path::PathBuf {
    match std::env::var_os("AUDITLB_S3_VENV") {
        Some(v) => v.into(),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/s3-venv"),
    }
}

/// A running S3 server, stopped when dropped.
pub struct S3 {
    _proc: Proc,
    pub endpoint: String,
}

impl S3 {
    pub fn start() -> S3 {
        let bin = venv().join("bin/moto_server");
        assert!(
            bin.exists(),
            "{} is missing: run scripts/test, which installs moto (an S3 server) from PyPI",
            bin.display()
        );
        let port = free_addr().port();
        let child = std::process::Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto_server");
        let proc = Proc { child };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "moto_server did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        S3 {
            _proc: proc,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    /// What auditlb reads its credentials and endpoint from.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ENDPOINT", &self.endpoint),
            ("AWS_ALLOW_HTTP", "true"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// Runs a boto3 script with `s3` bound to a client of this server;
    /// returns its stdout.
    pub fn boto(&self, script: &str) -> String {
        let prelude = format!(
            "import boto3\ns3 = boto3.client('s3', endpoint_url='{}', aws_access_key_id='test', aws_secret_access_key='test', region_name='us-east-1')\n",
            self.endpoint
        );
        let out = std::process::Command::new(venv().join("bin/python"))
            .args(["-c", &format!("{prelude}{script}")])
            .output()
            .expect("python");
        assert!(
            out.status.success(),
            "boto3 script failed: {}\n{script}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A bucket with Object Lock enabled (and so versioning).
    pub fn bucket_with_lock(&self, name: &str) {
        self.boto(&format!(
            "s3.create_bucket(Bucket='{name}', ObjectLockEnabledForBucket=True)"
        ));
    }

    /// Keys under `prefix`.
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        self.boto(&format!(
            "p = s3.get_paginator('list_objects_v2')\nfor page in p.paginate(Bucket='{bucket}', Prefix='{prefix}'):\n    for o in page.get('Contents', []):\n        print(o['Key'])"
        ))
        .lines()
        .map(str::to_owned)
        .collect()
    }
}

/// Runs the `auditlb` binary with `args` and extra environment; returns
/// (exit code, stdout, stderr).
pub fn auditlb_cli(args: &[&str], env: &[(String, String)]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_auditlb"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
