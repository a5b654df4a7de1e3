"""The page of `cnclip serve` in a real browser: Debian's chromium, headless, driven by chromedriver
through python3-selenium. Builds an index of the fixture photos, starts a server on an ephemeral
loopback port (always stopped), and checks what a person does: a search from the URL, thumbnails
appearing, an image upload, opening a result, "more like this", back/forward, the empty index.
Screenshots at desktop and phone width go to $CNCLIP_SCREENSHOTS (default: a temporary folder).

Environment: CNCLIP_BINARY, CNCLIP_MODEL (a bundle), CNCLIP_FIXTURES_DIR.
"""
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import unittest
import urllib.parse

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

BINARY = os.environ.get("CNCLIP_BINARY", "build/cnclip")
MODEL = os.environ.get("CNCLIP_MODEL", "build/test-data/tiny")
FIXTURES = os.environ.get("CNCLIP_FIXTURES_DIR", "../shared/fixtures")
PHOTOS = ["astronaut_palette.png", "camera_gray_1000x100.png", "chelsea_rgba.png", "coffee_2048x1366_exif6.jpg",
          "pokemon.jpeg", "rocket_rgb16_17x9.png"]


class Server:
    """`cnclip serve --port 0` in the background."""

    def __init__(self, index):
        self.err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([BINARY, "serve", "--port", "0", "--model", MODEL, "--index", index],
                                     stdout=subprocess.DEVNULL, stderr=self.err)
        self.url = None
        deadline = time.time() + 60
        while time.time() < deadline and self.url is None:
            m = re.search(rb"listening on (http://\S+/)", self.stderr_so_far())
            if m:
                self.url = m.group(1).decode()
            elif self.proc.poll() is not None:
                break
            else:
                time.sleep(0.05)
        if self.url is None:
            message = self.stderr_so_far().decode(errors="replace")
            self.stop()
            raise RuntimeError("cnclip serve did not start: " + message)

    def stderr_so_far(self):
        # pread: the server writes through the same open file, so a seek here moved its offset too,
        # and its next line overwrote the start of the file ("listening on " then the URL at offset 0:
        # the URL was never found, once in CI).
        return os.pread(self.err.fileno(), 1 << 20, 0)

    def stop(self):
        self.err.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return -1
        return self.proc.returncode


def make_driver(lang="en-US"):
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--lang=" + lang,
                "--window-size=1280,860", "--hide-scrollbars", "--force-device-scale-factor=1"]:
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"intl.accept_languages": lang})
    service = Service(shutil.which("chromedriver") or "/usr/bin/chromedriver")
    return webdriver.Chrome(service=service, options=options)


class PageTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="cnclip-browser-")
        cls.shots = os.environ.get("CNCLIP_SCREENSHOTS") or os.path.join(cls.tmp, "shots")
        os.makedirs(cls.shots, exist_ok=True)
        cls.photos = os.path.join(cls.tmp, "photos")
        os.makedirs(cls.photos)
        for name in PHOTOS:
            shutil.copy(os.path.join(FIXTURES, "images", name), os.path.join(cls.photos, name))
        cls.index = os.path.join(cls.tmp, "index")
        subprocess.run([BINARY, "index", "-q", "--model", MODEL, "--index", cls.index, cls.photos], check=True)
        cls.server = Server(cls.index)
        cls.driver = make_driver()

    @classmethod
    def tearDownClass(cls):
        try:
            cls.driver.quit()
        finally:
            status = cls.server.stop()
            shutil.rmtree(cls.tmp, ignore_errors=True)
            assert status == 0, f"cnclip serve exited with {status}"

    def wait(self, condition, timeout=30):
        return WebDriverWait(self.driver, timeout).until(lambda d: condition())

    def loaded_thumbnails(self):
        return self.driver.execute_script(
            "return [...document.querySelectorAll('.tile img')].filter(i => i.complete && i.naturalWidth > 0).length")

    def tiles(self):
        return self.driver.find_elements(By.CSS_SELECTOR, ".tile")

    def test_search_upload_open_and_navigate(self):
        d = self.driver
        d.set_window_size(1280, 860)
        d.get(self.server.url + "?q=" + urllib.parse.quote("小狗"))
        self.wait(lambda: self.loaded_thumbnails() == len(PHOTOS))
        self.assertEqual(d.find_element(By.ID, "q").get_attribute("value"), "小狗")
        self.assertIn("6 photos", d.find_element(By.ID, "status").text)
        # Scores are shown on the tiles, best first.
        scores = [float(e.text) for e in d.find_elements(By.CSS_SELECTOR, ".tile .badge")]
        self.assertEqual(scores, sorted(scores, reverse=True))
        d.save_screenshot(os.path.join(self.shots, "desktop.png"))

        # A typed query: '/' focuses the box, Enter searches, the URL follows.
        d.find_element(By.TAG_NAME, "body").send_keys("/")
        self.assertEqual(d.switch_to.active_element.get_attribute("id"), "q")
        box = d.find_element(By.ID, "q")
        box.clear()
        box.send_keys("a red rocket" + Keys.ENTER)
        self.wait(lambda: "q=a%20red%20rocket" in d.current_url and self.loaded_thumbnails() == len(PHOTOS))

        # Open a result: the large view shows the photo and its path.
        first = self.tiles()[0]
        path = first.get_attribute("title")
        first.click()
        viewer = d.find_element(By.ID, "viewer")
        self.wait(lambda: viewer.is_displayed())
        self.assertEqual(d.find_element(By.ID, "path").text, path)
        self.wait(lambda: d.execute_script("const i = document.getElementById('full'); return i.complete && i.naturalWidth > 0"))
        d.save_screenshot(os.path.join(self.shots, "viewer.png"))
        # More like this: a similar query in the URL, the photo itself left out.
        d.find_element(By.ID, "like").click()
        self.wait(lambda: "similar=" in d.current_url and self.loaded_thumbnails() == len(PHOTOS) - 1)
        self.assertNotIn(path, [t.get_attribute("title") for t in self.tiles()])
        # Back and forward.
        d.back()
        self.wait(lambda: "q=a%20red%20rocket" in d.current_url and self.loaded_thumbnails() == len(PHOTOS))
        self.assertEqual(d.find_element(By.ID, "q").get_attribute("value"), "a red rocket")
        d.forward()
        self.wait(lambda: "similar=" in d.current_url and self.loaded_thumbnails() == len(PHOTOS) - 1)

        # Upload an example image through the file picker.
        d.find_element(By.ID, "file").send_keys(os.path.join(self.photos, "pokemon.jpeg"))
        self.wait(lambda: self.loaded_thumbnails() == len(PHOTOS) and d.find_element(By.ID, "query-image").is_displayed())
        self.assertTrue(self.tiles()[0].get_attribute("title").endswith("pokemon.jpeg"))
        self.assertEqual(d.find_elements(By.CSS_SELECTOR, ".tile .badge")[0].text, "1.000")

        # Phone width: two columns, nothing wider than the screen.
        d.set_window_size(390, 844)
        d.get(self.server.url + "?q=" + urllib.parse.quote("猫"))
        self.wait(lambda: self.loaded_thumbnails() == len(PHOTOS))
        self.assertLessEqual(d.execute_script("return document.documentElement.scrollWidth"),
                             d.execute_script("return window.innerWidth"))
        lefts = {t.rect["x"] for t in self.tiles()}
        self.assertEqual(len(lefts), 2)
        d.save_screenshot(os.path.join(self.shots, "phone.png"))

    def test_bad_upload_and_errors_are_shown(self):
        d = self.driver
        d.set_window_size(1280, 860)
        d.get(self.server.url)
        self.wait(lambda: "6 photos indexed" in d.find_element(By.ID, "status").text)
        notes = os.path.join(self.tmp, "notes.jpg")
        with open(notes, "w") as f:
            f.write("not a photo\n")
        d.find_element(By.ID, "file").send_keys(notes)
        self.wait(lambda: "Error" in d.find_element(By.ID, "status").text)
        self.assertEqual(len(self.tiles()), 0)

    def test_empty_index_state(self):
        empty = Server(os.path.join(self.tmp, "no-index"))
        try:
            self.driver.get(empty.url)
            self.wait(lambda: "index is empty" in self.driver.find_element(By.ID, "status").text)
            self.driver.get(empty.url + "?q=x")
            self.wait(lambda: "No matching photos" in self.driver.find_element(By.ID, "status").text)
        finally:
            self.assertEqual(empty.stop(), 0)

    def test_more_results_load_on_scroll(self):
        # 54 photos: the page asks for 40, then for the rest when the end of the grid comes into view.
        many = os.path.join(self.tmp, "many")
        os.makedirs(many)
        for i in range(9):
            for name in PHOTOS:
                shutil.copy(os.path.join(FIXTURES, "images", name), os.path.join(many, f"{i}_{name}"))
        index = os.path.join(self.tmp, "many-index")
        subprocess.run([BINARY, "index", "-q", "--model", MODEL, "--index", index, many], check=True)
        server = Server(index)
        try:
            d = self.driver
            d.set_window_size(1280, 860)
            d.get(server.url + "?q=" + urllib.parse.quote("海边"))
            self.wait(lambda: len(self.tiles()) == 40 and "scroll for more" in d.find_element(By.ID, "status").text)
            time.sleep(0.5)
            self.assertEqual(len(self.tiles()), 40)  # nothing more until the grid's end is near
            d.execute_script("window.scrollTo(0, document.body.scrollHeight)")
            self.wait(lambda: len(self.tiles()) == 54)
            ranks = [int(e.text) for e in d.find_elements(By.CSS_SELECTOR, ".tile .rank")]
            self.assertEqual(ranks, list(range(1, 55)))
            self.assertIn("54 photos", d.find_element(By.ID, "status").text)
        finally:
            self.assertEqual(server.stop(), 0)

    def test_drop_and_paste_an_image(self):
        d = self.driver
        d.set_window_size(1280, 860)
        d.get(self.server.url + "?q=x")
        self.wait(lambda: self.loaded_thumbnails() == len(PHOTOS))
        pokemon = [t for t in self.tiles() if t.get_attribute("title").endswith("pokemon.jpeg")][0]
        image_url = d.execute_script("return arguments[0].querySelector('img').src.replace('/thumb/', '/image/')", pokemon)
        # The same events a person's drop and paste make, with a real File in a DataTransfer.
        for event in ["drop", "paste"]:
            d.get(self.server.url + "?q=x")
            self.wait(lambda: self.loaded_thumbnails() == len(PHOTOS))
            d.execute_async_script("""
                const [url, kind, done] = arguments;
                fetch(url).then(r => r.blob()).then(blob => {
                  const dt = new DataTransfer();
                  dt.items.add(new File([blob], 'example.jpeg', {type: 'image/jpeg'}));
                  const e = kind === 'drop' ? new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true})
                                            : new ClipboardEvent('paste', {clipboardData: dt, bubbles: true, cancelable: true});
                  (kind === 'drop' ? window : document).dispatchEvent(e);
                  done();
                });""", image_url, event)
            self.wait(lambda: d.current_url.endswith("/?image") and self.loaded_thumbnails() == len(PHOTOS))
            self.assertTrue(self.tiles()[0].get_attribute("title").endswith("pokemon.jpeg"), event)
            self.assertEqual(d.find_elements(By.CSS_SELECTOR, ".tile .badge")[0].text, "1.000")

    def test_chinese_labels_for_a_chinese_browser(self):
        zh = make_driver("zh-CN")
        try:
            zh.get(self.server.url)
            WebDriverWait(zh, 30).until(lambda d: "已索引 6 张照片" in d.find_element(By.ID, "status").text)
            self.assertIn("描述", zh.find_element(By.ID, "q").get_attribute("placeholder"))
            self.assertEqual(zh.find_element(By.CSS_SELECTOR, "button.go").text, "搜索")
            self.assertEqual(zh.execute_script("return document.documentElement.lang"), "zh-CN")
        finally:
            zh.quit()


if __name__ == "__main__":
    unittest.main()
