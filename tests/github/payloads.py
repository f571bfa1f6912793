"""Webhook deliveries as GitHub sends them: realistic payloads, checked against githubkit's webhook models before
use, serialized once and signed (``X-Hub-Signature-256``) over exactly the bytes that are posted."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from githubkit import webhooks

from devart.github.client import signature

WEB, API = "https://github.com", "https://api.github.com"
NOW = "2026-11-23T21:00:00Z"
#: The repository-level URL templates GitHub puts in every repository object.
_REPO_URLS = {
    "archive_url": "/{archive_format}{/ref}", "assignees_url": "/assignees{/user}", "blobs_url": "/git/blobs{/sha}",
    "branches_url": "/branches{/branch}", "collaborators_url": "/collaborators{/collaborator}",
    "comments_url": "/comments{/number}", "commits_url": "/commits{/sha}", "compare_url": "/compare/{base}...{head}",
    "contents_url": "/contents/{+path}", "contributors_url": "/contributors", "deployments_url": "/deployments",
    "downloads_url": "/downloads", "events_url": "/events", "forks_url": "/forks", "git_commits_url":
    "/git/commits{/sha}", "git_refs_url": "/git/refs{/sha}", "git_tags_url": "/git/tags{/sha}", "hooks_url":
    "/hooks", "issue_comment_url": "/issues/comments{/number}", "issue_events_url": "/issues/events{/number}",
    "issues_url": "/issues{/number}", "keys_url": "/keys{/key_id}", "labels_url": "/labels{/name}",
    "languages_url": "/languages", "merges_url": "/merges", "milestones_url": "/milestones{/number}",
    "notifications_url": "/notifications{?since,all,participating}", "pulls_url": "/pulls{/number}",
    "releases_url": "/releases{/id}", "stargazers_url": "/stargazers", "statuses_url": "/statuses/{sha}",
    "subscribers_url": "/subscribers", "subscription_url": "/subscription", "tags_url": "/tags",
    "teams_url": "/teams", "trees_url": "/git/trees{/sha}",
}


def user(login: str, uid: int, kind: str = "User") -> dict[str, Any]:
    url = f"{API}/users/{login}"
    return {
        "login": login, "id": uid, "node_id": f"U_{uid}", "avatar_url": f"https://avatars.example/u/{uid}",
        "gravatar_id": "", "url": url, "html_url": f"{WEB}/{login}", "followers_url": f"{url}/followers",
        "following_url": f"{url}/following{{/other_user}}", "gists_url": f"{url}/gists{{/gist_id}}",
        "starred_url": f"{url}/starred{{/owner}}{{/repo}}", "subscriptions_url": f"{url}/subscriptions",
        "organizations_url": f"{url}/orgs", "repos_url": f"{url}/repos", "events_url": f"{url}/events{{/privacy}}",
        "received_events_url": f"{url}/received_events", "type": kind, "user_view_type": "public",
        "site_admin": False,
    }


def repository(full_name: str, rid: int, clone_url: str) -> dict[str, Any]:
    owner, name = full_name.split("/")
    url = f"{API}/repos/{full_name}"
    return {
        "id": rid, "node_id": f"R_{rid}", "name": name, "full_name": full_name, "private": False,
        "owner": user(owner, rid + 1, "Organization"), "html_url": f"{WEB}/{full_name}", "description": "demo",
        "fork": False, "url": url, **{k: url + v for k, v in _REPO_URLS.items()},
        "created_at": "2026-01-02T03:04:05Z", "updated_at": NOW, "pushed_at": NOW,
        "git_url": f"git://github.com/{full_name}.git", "ssh_url": f"git@github.com:{full_name}.git",
        "clone_url": clone_url, "svn_url": f"{WEB}/{full_name}", "homepage": None, "size": 12,
        "stargazers_count": 0, "watchers_count": 0, "language": "Python", "has_issues": True,
        "has_projects": False, "has_downloads": True, "has_wiki": False, "has_pages": False,
        "has_discussions": False, "forks_count": 0, "mirror_url": None, "archived": False, "disabled": False,
        "open_issues_count": 1, "license": None, "allow_forking": True, "is_template": False,
        "web_commit_signoff_required": False, "topics": [], "visibility": "public", "forks": 0, "open_issues": 1,
        "watchers": 0, "default_branch": "main",
    }


@dataclass
class PullRequest:
    """One pull request of the test repository; ``push`` moves its head like a ``git push`` would."""

    full_name: str
    number: int
    head_sha: str
    base_sha: str
    clone_url: str
    author: str = "octo-dev"
    installation_id: int = 4242
    repo_id: int = field(default_factory=lambda: uuid.uuid4().int % 10**8)

    def repo(self) -> dict[str, Any]:
        return repository(self.full_name, self.repo_id, self.clone_url)

    def payload(self) -> dict[str, Any]:
        url = f"{API}/repos/{self.full_name}/pulls/{self.number}"
        html = f"{WEB}/{self.full_name}/pull/{self.number}"
        owner = self.full_name.split("/")[0]
        links = {"self": url, "html": html, "issue": f"{API}/repos/{self.full_name}/issues/{self.number}",
                 "comments": f"{API}/repos/{self.full_name}/issues/{self.number}/comments",
                 "review_comments": f"{url}/comments", "review_comment": f"{API}/repos/{self.full_name}/pulls/"
                 "comments{/number}", "commits": f"{url}/commits",
                 "statuses": f"{API}/repos/{self.full_name}/statuses/{self.head_sha}"}
        return {
            "url": url, "id": self.number * 1000 + 7, "node_id": f"PR_{self.number}", "html_url": html,
            "diff_url": f"{html}.diff", "patch_url": f"{html}.patch", "issue_url": links["issue"],
            "number": self.number, "state": "open", "locked": False, "title": "Add a feature",
            "user": user(self.author, 77), "body": "Please review.", "created_at": NOW, "updated_at": NOW,
            "closed_at": None, "merged_at": None, "merge_commit_sha": None, "assignee": None, "assignees": [],
            "requested_reviewers": [], "requested_teams": [], "labels": [], "milestone": None, "draft": False,
            "commits_url": links["commits"], "review_comments_url": links["review_comments"],
            "review_comment_url": links["review_comment"], "comments_url": links["comments"],
            "statuses_url": links["statuses"],
            "head": {"label": f"{self.author}:feature", "ref": "feature", "sha": self.head_sha,
                     "user": user(self.author, 77), "repo": self.repo()},
            "base": {"label": f"{owner}:main", "ref": "main", "sha": self.base_sha,
                     "user": user(owner, self.repo_id + 1, "Organization"), "repo": self.repo()},
            "_links": {k: {"href": v} for k, v in links.items()}, "author_association": "CONTRIBUTOR",
            "auto_merge": None, "active_lock_reason": None, "merged": False, "mergeable": None, "rebaseable": None,
            "mergeable_state": "unknown", "merged_by": None, "comments": 0, "review_comments": 0,
            "maintainer_can_modify": False, "commits": 2, "additions": 10, "deletions": 1, "changed_files": 2,
        }


def _envelope(pr: PullRequest, action: str, **rest: Any) -> dict[str, Any]:
    return {"action": action, **rest, "repository": pr.repo(), "sender": user(pr.author, 77),
            "installation": {"id": pr.installation_id, "node_id": f"I_{pr.installation_id}"}}


def pull_request_event(pr: PullRequest, action: str, before: str | None = None) -> dict[str, Any]:
    extra = {"before": before or pr.base_sha, "after": pr.head_sha} if action == "synchronize" else {}
    return _envelope(pr, action, number=pr.number, pull_request=pr.payload(), **extra)


def check_run_event(pr: PullRequest, check_run: dict[str, Any], action: str = "rerequested") -> dict[str, Any]:
    """``check_run`` as GitHub sends it, from the check run the double holds (GitHub's own JSON of it)."""
    run = {k: v for k, v in check_run.items() if k != "deployment"}
    suite = run["check_suite"]
    run["check_suite"] = {**suite, "after": pr.head_sha, "before": pr.base_sha, "head_branch": "feature",
                          "head_sha": pr.head_sha, "pull_requests": run["pull_requests"], "status": "completed",
                          "conclusion": run["conclusion"], "app": run["app"], "created_at": NOW,
                          "updated_at": NOW, "url": f"{API}/repos/{pr.full_name}/check-suites/{suite['id']}"}
    return _envelope(pr, action, check_run=run)


def issue_comment_event(pr: PullRequest, body: str, association: str, login: str = "maintainer") -> dict[str, Any]:
    issue_url = f"{API}/repos/{pr.full_name}/issues/{pr.number}"
    reactions = {"url": f"{issue_url}/reactions", "total_count": 0, "+1": 0, "-1": 0, "laugh": 0, "hooray": 0,
                 "confused": 0, "heart": 0, "rocket": 0, "eyes": 0}
    comment = {"url": f"{issue_url}/comments/9001", "html_url": f"{WEB}/{pr.full_name}/pull/{pr.number}#c9001",
               "issue_url": issue_url, "id": 9001, "node_id": "IC_9001", "user": user(login, 99),
               "created_at": NOW, "updated_at": NOW, "author_association": association, "body": body,
               "reactions": reactions, "performed_via_github_app": None}
    issue = {"url": issue_url, "repository_url": f"{API}/repos/{pr.full_name}",
             "labels_url": f"{issue_url}/labels{{/name}}", "comments_url": f"{issue_url}/comments",
             "events_url": f"{issue_url}/events", "html_url": f"{WEB}/{pr.full_name}/pull/{pr.number}",
             "id": pr.number * 1000 + 7, "node_id": f"PR_{pr.number}", "number": pr.number,
             "title": "Add a feature", "user": user(pr.author, 77), "labels": [], "state": "open", "locked": False,
             "assignee": None, "assignees": [], "milestone": None, "comments": 1, "created_at": NOW,
             "updated_at": NOW, "closed_at": None, "author_association": "CONTRIBUTOR", "active_lock_reason": None,
             "draft": False, "body": "Please review.", "reactions": reactions, "timeline_url": f"{issue_url}/timeline",
             "performed_via_github_app": None, "state_reason": None,
             "pull_request": {"url": f"{API}/repos/{pr.full_name}/pulls/{pr.number}",
                              "html_url": f"{WEB}/{pr.full_name}/pull/{pr.number}",
                              "diff_url": f"{WEB}/{pr.full_name}/pull/{pr.number}.diff",
                              "patch_url": f"{WEB}/{pr.full_name}/pull/{pr.number}.patch", "merged_at": None}}
    return _envelope(pr, "created", comment=comment, issue=issue)


@dataclass(frozen=True)
class Delivery:
    event: str
    body: bytes
    headers: dict[str, str]


def delivery(event: str, payload: dict[str, Any], secret: str, delivery_id: str | None = None) -> Delivery:
    """Validate ``payload`` with githubkit's models for ``event``, serialize it and sign the exact bytes."""
    webhooks.parse_obj(event, payload)  # raises if the payload is not what GitHub would send
    body = json.dumps(payload).encode()
    return Delivery(event, body, {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery_id or str(uuid.uuid4()),
                                  "X-Hub-Signature-256": signature(secret, body), "Content-Type": "application/json",
                                  "User-Agent": "GitHub-Hookshot/devart-test"})
