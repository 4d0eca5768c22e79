//! A headless Chromium for the console's browser tests (issue 20): Debian's `chromium`
//! and `chromium-driver` (installed by `make test-deps`) driven over WebDriver with
//! `fantoccini` — a plain async WebDriver client on the tokio and hyper the project
//! already uses, where a DevTools client would add a second protocol stack. Each test
//! saves its screenshots under `target/console-screenshots/<test>/`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

pub struct Browser {
    pub client: Client,
    driver: std::process::Child,
    shots: PathBuf,
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser")
            .field("shots", &self.shots)
            .finish_non_exhaustive()
    }
}

impl Browser {
    pub async fn start(test: &str) -> Browser {
        assert!(
            Path::new(CHROMEDRIVER).exists(),
            "{CHROMEDRIVER} is missing: run `make test-deps` (apt packages chromium and chromium-driver)"
        );
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let driver = std::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", "--window-size=1280,1000"]}),
        );
        let mut last = None;
        let mut client = None;
        for _ in 0..50 {
            match ClientBuilder::rustls()
                .expect("a TLS config")
                .capabilities(capabilities.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(connected) => {
                    client = Some(connected);
                    break;
                }
                Err(error) => {
                    last = Some(error);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        let client = client.unwrap_or_else(|| panic!("chromedriver did not start: {last:?}"));
        let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/console-screenshots")
            .join(test);
        std::fs::create_dir_all(&shots).unwrap();
        Browser {
            client,
            driver,
            shots,
        }
    }

    pub async fn shot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }

    /// Waits up to 30 s (a loaded CI machine, a first cold start) for `css`.
    pub async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(Duration::from_secs(30))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
    }

    /// Waits until `css` holds `text`.
    pub async fn text_of(&self, css: &str, text: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            // An empty `text`: any text at all.
            if let Ok(found) = self.client.find(Locator::Css(css)).await
                && let Ok(seen) = found.text().await
                && seen.contains(text)
                && !seen.trim().is_empty()
            {
                return seen;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{css} never said {text:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Opens the console and signs in with the service key.
    pub async fn sign_in_as_admin(&self, base: &str, service_key: &str) {
        self.go(&format!("{base}/console")).await;
        self.find("#api-key")
            .await
            .send_keys(service_key)
            .await
            .unwrap();
        self.find("#key-form button").await.click().await.unwrap();
        self.text_of("#who", "admin").await;
    }

    /// Clicks the first `css` once it exists.
    pub async fn click(&self, css: &str) {
        self.find(css).await.click().await.unwrap();
    }

    /// Types `text` into the first `css` (a file input takes a path).
    pub async fn type_into(&self, css: &str, text: &str) {
        self.find(css).await.send_keys(text).await.unwrap();
    }

    /// Picks the option with `value` in the select `css`.
    pub async fn choose(&self, css: &str, value: &str) {
        self.find(css).await.select_by_value(value).await.unwrap();
    }

    /// The `attribute` of every element matching `css` (an absent one is empty).
    pub async fn attributes(&self, css: &str, attribute: &str) -> Vec<String> {
        let mut out = Vec::new();
        for element in self.client.find_all(Locator::Css(css)).await.unwrap() {
            out.push(element.attr(attribute).await.unwrap().unwrap_or_default());
        }
        out
    }

    pub async fn go(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    pub async fn stop(mut self) {
        let _ = self.client.close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
