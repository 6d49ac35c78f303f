//! Headless Chromium driven over W3C WebDriver (chromedriver), for the
//! tests that need a real browser: the dashboard and the demo room.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

/// A W3C WebDriver session on a chromedriver of its own, driving headless
/// Chromium. `quit` ends the session (chromedriver closes Chromium);
/// dropped, chromedriver's whole process group is killed, Chromium with it,
/// so that even a failing test leaves no browser behind.
pub struct Browser {
    http: reqwest::Client,
    base: String,
    driver: std::process::Child,
    _profile: tempfile::TempDir,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    pub async fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        use std::os::unix::process::CommandExt;
        let driver = std::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect(
                "chromedriver runs (apt-get install chromium chromium-driver, as .ci/run does)",
            );
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        let base = format!("http://127.0.0.1:{port}");
        for _ in 0..100 {
            if http.get(format!("{base}/status")).send().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            // Containers often give /dev/shm 64 MiB, too little for a tab.
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,1600",
        ];
        let mut args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let created: Value = http
            .post(format!("{base}/session"))
            .json(&json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args},
            }}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = created["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("{created}"));
        Browser { http, base: format!("{base}/session/{id}"), driver, _profile: profile }
    }

    async fn try_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Value> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let reply: Value = request.send().await.unwrap().json().await.unwrap();
        if reply["value"].get("error").is_some() { Err(reply) } else { Ok(reply["value"].clone()) }
    }

    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        self.try_call(method, path, body)
            .await
            .unwrap_or_else(|reply| panic!("WebDriver {path}: {reply}"))
    }

    /// Reads from the element `css` finds; the panel may be swapped between
    /// finding and reading (it refreshes), so a stale element is found again.
    async fn read(&self, css: &str, what: &str) -> Value {
        for _ in 0..20 {
            let element = self.find(css).await;
            match self
                .try_call(reqwest::Method::GET, &format!("/element/{element}/{what}"), None)
                .await
            {
                Ok(value) => return value,
                Err(reply) if reply["value"]["error"] == "stale element reference" => continue,
                Err(reply) => panic!("WebDriver {css} {what}: {reply}"),
            }
        }
        panic!("{css} kept going stale");
    }

    pub async fn go(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url}))).await;
    }

    pub async fn url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", None).await.as_str().unwrap().to_owned()
    }

    /// Waits (bounded) until a navigation lands on a URL ending so.
    pub async fn wait_for_url(&self, suffix: &str) {
        for _ in 0..300 {
            if self.url().await.ends_with(suffix) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("never reached …{suffix}; at {}", self.url().await);
    }

    pub async fn source(&self) -> String {
        self.call(reqwest::Method::GET, "/source", None).await.as_str().unwrap().to_owned()
    }

    pub async fn find_all(&self, css: &str) -> Vec<String> {
        let found = self
            .call(
                reqwest::Method::POST,
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        found
            .as_array()
            .unwrap()
            .iter()
            .map(|element| element[ELEMENT].as_str().unwrap().to_owned())
            .collect()
    }

    pub async fn find(&self, css: &str) -> String {
        self.find_all(css).await.into_iter().next().unwrap_or_else(|| panic!("no {css}"))
    }

    pub async fn attribute(&self, css: &str, name: &str) -> String {
        let value = self.read(css, &format!("attribute/{name}")).await;
        value.as_str().unwrap_or_else(|| panic!("{css} has no {name}")).to_owned()
    }

    pub async fn text(&self, css: &str) -> String {
        self.read(css, "text").await.as_str().unwrap().to_owned()
    }

    pub async fn click(&self, css: &str) {
        for _ in 0..20 {
            let element = self.find(css).await;
            let path = format!("/element/{element}/click");
            match self.try_call(reqwest::Method::POST, &path, Some(json!({}))).await {
                Ok(_) => return,
                Err(reply) if reply["value"]["error"] == "stale element reference" => continue,
                Err(reply) => panic!("WebDriver click {css}: {reply}"),
            }
        }
        panic!("{css} kept going stale");
    }

    /// Clicks a link in the dashboard's panel until the page is at
    /// `…suffix`. The panel is rebuilt every second here: rebuilt between
    /// the press and the release, a click lands on the new panel rather
    /// than the link, and goes nowhere. Clicked again only while the page
    /// has not moved and the link is still there.
    pub async fn click_in_panel(&self, css: &str, suffix: &str) {
        let before = self.url().await;
        for _ in 0..5 {
            let Some(link) = self.find_all(css).await.into_iter().next() else { break };
            let path = format!("/element/{link}/click");
            // A stale link was rebuilt: the next turn finds the new one.
            let _ = self.try_call(reqwest::Method::POST, &path, Some(json!({}))).await;
            for _ in 0..30 {
                if self.url().await != before {
                    return self.wait_for_url(suffix).await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        self.wait_for_url(suffix).await;
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    /// Saves a PNG of the page as a test artifact, in the tests' output
    /// folder (never the source tree); returns where.
    pub async fn screenshot(&self, name: &str) -> std::path::PathBuf {
        let data = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD.decode(data.as_str().unwrap()).unwrap();
        let folder = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser");
        std::fs::create_dir_all(&folder).unwrap();
        let path = folder.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// Lays pages out as a screen `width` CSS pixels wide would (a phone at
    /// 390, with its mobile viewport), through Chromium's device emulation.
    pub async fn set_viewport(&self, width: u32, height: u32) {
        let params = json!({"width": width, "height": height, "deviceScaleFactor": 1,
                            "mobile": width < 600});
        self.call(
            reqwest::Method::POST,
            "/goog/cdp/execute",
            Some(json!({"cmd": "Emulation.setDeviceMetricsOverride", "params": params})),
        )
        .await;
    }

    /// Runs `script` (a function body) in the page; returns what it returns.
    pub async fn execute(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Adds a cookie for the current page's site.
    pub async fn add_cookie(&self, name: &str, value: &str) {
        let cookie = json!({"cookie": {"name": name, "value": value, "path": "/"}});
        self.call(reqwest::Method::POST, "/cookie", Some(cookie)).await;
    }

    /// Opens `url` in a new tab and switches to it; returns the tab's handle.
    pub async fn open_tab(&self, url: &str) -> String {
        let tab =
            self.call(reqwest::Method::POST, "/window/new", Some(json!({"type": "tab"}))).await;
        let handle = tab["handle"].as_str().unwrap().to_owned();
        self.switch_to(&handle).await;
        self.go(url).await;
        handle
    }

    pub async fn switch_to(&self, handle: &str) {
        self.call(reqwest::Method::POST, "/window", Some(json!({"handle": handle}))).await;
    }

    /// Closes the current tab as its user would (the page gets its
    /// `pagehide`); the browser stays open on its other tabs.
    pub async fn close_tab(&self) -> Vec<String> {
        let left = self.call(reqwest::Method::DELETE, "/window", None).await;
        left.as_array().unwrap().iter().map(|h| h.as_str().unwrap().to_owned()).collect()
    }

    /// Waits (bounded) until the element `css` finds has a non-empty text.
    pub async fn wait_for_text(&self, css: &str) -> String {
        for _ in 0..300 {
            if !self.find_all(css).await.is_empty() {
                let text = self.text(css).await;
                if !text.is_empty() {
                    return text;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{css} never showed any text; page: {}", self.source().await);
    }
}

impl Browser {
    /// Ends the WebDriver session: chromedriver closes the browser.
    pub async fn quit(self) {
        let _ = self.http.delete(&self.base).send().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let group = format!("-{}", self.driver.id());
        let _ = std::process::Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
