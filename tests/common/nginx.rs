//! A real Nginx running the shipped site file (`nginx/xhubd.conf` and its snippet),
//! with only paths, the port and the socket substituted, and curl as Meta's TLS client.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::pki::{ClientId, Pki};
use super::{free_port, wait_for};

/// Finds the nginx binary, or fails loudly: `scripts/test.sh` installs nginx-light.
pub fn nginx_binary() -> PathBuf {
    for candidate in ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"] {
        if Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    panic!("nginx is not installed: run `bash scripts/test.sh`, which installs nginx-light (or apt-get install nginx-light)");
}

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn replace_once(text: &mut String, from: &str, to: &str) {
    assert!(
        text.contains(from),
        "the shipped site file no longer contains {from:?}"
    );
    *text = text.replace(from, to);
}

/// Renders the shipped site file for a test: paths, port and socket only; its logs go
/// to `log_dir`. `enable_no_mtls` uncomments the shipped variant location without mTLS.
pub fn render_site(
    pki: &Pki,
    port: u16,
    socket: &Path,
    log_dir: &Path,
    enable_no_mtls: bool,
) -> String {
    let mut site = std::fs::read_to_string(repo_file("nginx/xhubd.conf")).unwrap();
    replace_once(
        &mut site,
        "/var/log/nginx/",
        &format!("{}/", log_dir.display()),
    );
    replace_once(
        &mut site,
        "listen 443 ssl;",
        &format!("listen 127.0.0.1:{port} ssl;"),
    );
    replace_once(&mut site, "    listen [::]:443 ssl;\n", "");
    replace_once(
        &mut site,
        "/etc/ssl/certs/webhooks.example.com.fullchain.pem",
        pki.server_cert.to_str().unwrap(),
    );
    replace_once(
        &mut site,
        "/etc/ssl/private/webhooks.example.com.key",
        pki.server_key.to_str().unwrap(),
    );
    replace_once(
        &mut site,
        "ssl_client_certificate /etc/nginx/meta-webhooks-ca.pem;",
        &format!("ssl_client_certificate {};", pki.client_ca.display()),
    );
    replace_once(
        &mut site,
        "unix:/run/xhubd/xhubd.sock",
        &format!("unix:{}", socket.display()),
    );
    replace_once(
        &mut site,
        "/etc/nginx/snippets/xhubd-proxy.conf",
        repo_file("nginx/xhubd-proxy.conf").to_str().unwrap(),
    );
    if enable_no_mtls {
        let start = site
            .find("    #location /webhook/no-mtls {")
            .expect("the shipped no-mTLS variant");
        let end = start + site[start..].find("    #}\n").unwrap() + "    #}\n".len();
        let block = site[start..end].replace("    #", "    ");
        site.replace_range(start..end, &block);
    }
    site
}

/// A running Nginx.
pub struct Nginx {
    child: Child,
    pub dir: tempfile::TempDir,
    pub port: u16,
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Nginx {
    /// Checks the rendered config with `nginx -t`, then starts Nginx in the foreground.
    pub fn start(pki: &Pki, socket: &Path, enable_no_mtls: bool) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let site = dir.path().join("site.conf");
        std::fs::write(
            &site,
            render_site(pki, port, socket, dir.path(), enable_no_mtls),
        )
        .unwrap();
        let d = dir.path().display();
        // The distribution's nginx.conf, reduced to what a test needs.
        let main = format!(
            "{user}worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  include {d}/site.conf;\n}}\n",
            user = if running_as_root() { "user root;\n" } else { "" },
        );
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, main).unwrap();
        let nginx = nginx_binary();
        let error_log = dir.path().join("error.log");
        let test = Command::new(&nginx)
            .arg("-t")
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(&error_log)
            .output()
            .unwrap();
        assert!(
            test.status.success(),
            "nginx -t failed: {}",
            String::from_utf8_lossy(&test.stderr)
        );
        let child = Command::new(&nginx)
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(&error_log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for(Duration::from_secs(10), "nginx to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Nginx { child, dir, port }
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// The site's own access log (`xhubd.access.log` in the shipped file).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("xhubd.access.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-QUIT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// One HTTPS request with curl, as Meta would make it.
pub struct Curl<'a> {
    pub pki: &'a Pki,
    pub port: u16,
}

/// What curl got.
#[derive(Debug)]
pub struct CurlAnswer {
    /// 0 when no HTTP answer came (TLS handshake refused).
    pub status: u16,
    pub body: Vec<u8>,
    pub headers: String,
}

impl Curl<'_> {
    pub fn send(
        &self,
        method: &str,
        path: &str,
        client: Option<&ClientId>,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> CurlAnswer {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("body");
        let head = dir.path().join("headers");
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--http1.1", "-X", method, "-o"])
            .arg(&out)
            .arg("-D")
            .arg(&head)
            .args(["-w", "%{http_code}", "--cacert"])
            .arg(&self.pki.server_ca)
            .arg("--resolve")
            .arg(format!("localhost:{}:127.0.0.1", self.port));
        if let Some(id) = client {
            cmd.arg("--cert").arg(&id.chain).arg("--key").arg(&id.key);
        }
        for (n, v) in headers {
            cmd.arg("-H").arg(format!("{n}: {v}"));
        }
        if let Some(b) = body {
            let file = dir.path().join("request");
            std::fs::write(&file, b).unwrap();
            cmd.arg("--data-binary").arg(format!("@{}", file.display()));
        }
        cmd.arg(format!("https://localhost:{}{}", self.port, path));
        let output = cmd
            .output()
            .expect("curl is needed for the Nginx tests (Debian package curl)");
        let code = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        CurlAnswer {
            status: code.parse().unwrap_or(0),
            body: std::fs::read(&out).unwrap_or_default(),
            headers: std::fs::read_to_string(&head).unwrap_or_default(),
        }
    }
}
