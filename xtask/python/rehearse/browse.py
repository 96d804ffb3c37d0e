"""Rehearsal only: looks at the migrated Sentry as a person does, in a real headless Chromium.

    python3 browse.py BASE_URL STATE_JSON SHOTS_DIR
(Python 3 with selenium; Debian's chromium and chromium-driver.)
STATE_JSON: {"login": {"username", "password"},
             "pages": [{"name", "path", "expect": [text...], "absent": [text...],
                        "open_first_group": bool, "follow_pages": bool}]}
Logs in through Sentry's own login form, opens each page, and checks that every `expect` text
is on it and no `absent` text is (with `follow_pages`, on any of its pages); with
`open_first_group` it also opens the first group whose title has the first `expect` text and
checks that its page renders it. Every page is kept as a PNG in
SHOTS_DIR. Script errors (the browser's log, source `javascript`) fail the page. Prints JSON
facts; exits 0 (the caller decides).
"""
import json
import os
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

MAX_PAGES = 20


def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get('CHROMIUM', '/usr/bin/chromium')
    for arg in ('--headless=new', '--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu',
                '--window-size=1280,1600', '--no-first-run', '--disable-extensions'):
        options.add_argument(arg)
    options.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
    service = Service(os.environ.get('CHROMEDRIVER', '/usr/bin/chromedriver'))
    return webdriver.Chrome(service=service, options=options)


def script_errors(driver):
    """The browser's log since the last call: JavaScript errors, and everything else apart."""
    errors, other = [], []
    for entry in driver.get_log('browser'):
        text = '%s %s: %s' % (entry.get('level'), entry.get('source'), entry.get('message'))
        if entry.get('level') == 'SEVERE' and entry.get('source') == 'javascript':
            errors.append(text)
        else:
            other.append(text)
    return errors, other


def body_text(driver):
    return driver.find_element(By.TAG_NAME, 'body').text


def look(driver, base, page, shots, facts):
    name = page['name']
    driver.get(base + page['path'])
    time.sleep(0.5)
    text = body_text(driver)
    shot = os.path.join(shots, '%s.png' % name)
    driver.save_screenshot(shot)
    errors, other = script_errors(driver)
    first_url = driver.current_url
    # The stream is paged (newest first): with `follow_pages`, read on until every expected
    # text was seen or the last page (at most MAX_PAGES).
    pages_read = 1
    while (page.get('follow_pages') and pages_read < MAX_PAGES
           and any(t not in text for t in page.get('expect', []))):
        nexts = driver.find_elements(By.CSS_SELECTOR, 'a.btn.next:not(.disabled)')
        if not nexts:
            break
        driver.get(nexts[0].get_attribute('href'))
        time.sleep(0.3)
        pages_read += 1
        text += '\n' + body_text(driver)
        driver.save_screenshot(os.path.join(shots, '%s-page%d.png' % (name, pages_read)))
        more_errors, more_other = script_errors(driver)
        errors += more_errors
        other += more_other
    if pages_read > 1:
        driver.get(first_url)
        time.sleep(0.3)
        script_errors(driver)
    seen = {
        'url': first_url,
        'title': driver.title,
        'pages_read': pages_read,
        'screenshot': shot,
        'missing': [t for t in page.get('expect', []) if t not in text],
        'present_but_absent_expected': [t for t in page.get('absent', []) if t in text],
        'script_errors': errors,
        'other_log': other[:20],
    }
    if page.get('open_first_group'):
        # A migrated group: the first whose title has the page's first expected text.
        wanted = (page.get('expect') or [''])[0]
        links = [a for a in driver.find_elements(By.CSS_SELECTOR, 'a[href*="/group/"]')
                 if a.get_attribute('href').rstrip('/').split('/')[-2] == 'group'
                 and wanted in a.text]
        if not links:
            seen['group'] = {'error': 'no link to a group on the stream'}
        else:
            title = links[0].text.strip()
            href = links[0].get_attribute('href')
            driver.get(href)
            time.sleep(0.5)
            group_text = body_text(driver)
            group_shot = os.path.join(shots, '%s-group.png' % name)
            driver.save_screenshot(group_shot)
            group_errors, group_other = script_errors(driver)
            seen['group'] = {
                'url': driver.current_url,
                'link_text': title,
                'title_on_page': bool(title) and title.split('\n')[0][:40] in group_text,
                'expect_on_page': [t for t in [wanted] if t in group_text],
                'screenshot': group_shot,
                'script_errors': group_errors,
                'other_log': group_other[:20],
            }
    seen['ok'] = (not seen['missing'] and not seen['present_but_absent_expected'] and not errors
                  and ('group' not in seen or (not seen['group'].get('error')
                                               and seen['group']['title_on_page']
                                               and seen['group']['expect_on_page'] == [wanted]
                                               and not seen['group']['script_errors'])))
    facts['pages'][name] = seen


def main():
    base, state_path, shots = sys.argv[1].rstrip('/'), sys.argv[2], sys.argv[3]
    state = json.load(open(state_path))
    os.makedirs(shots, exist_ok=True)
    facts = {'pages': {}}
    driver = browser()
    try:
        driver.get(base + '/login/')
        driver.find_element(By.NAME, 'username').send_keys(state['login']['username'])
        driver.find_element(By.NAME, 'password').send_keys(state['login']['password'])
        driver.find_element(By.NAME, 'password').submit()
        time.sleep(0.5)
        facts['login_url'] = driver.current_url
        facts['login_ok'] = '/login/' not in driver.current_url
        driver.save_screenshot(os.path.join(shots, 'after-login.png'))
        facts['login_script_errors'] = script_errors(driver)[0]
        for page in state['pages']:
            look(driver, base, page, shots, facts)
    finally:
        driver.quit()
    facts['ok'] = (facts['login_ok'] and not facts['login_script_errors']
                   and all(p['ok'] for p in facts['pages'].values()))
    sys.stdout.write(json.dumps(facts) + '\n')


if __name__ == '__main__':
    main()
