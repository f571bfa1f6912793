"""The pull-request review: the review stage's findings as line comments on the head commit, once per commit.

A run of the same commit (a re-run of the review stage, ``/devart rerun``) updates that review's text when its
line comments are the same, and otherwise supersedes it with a new review: a submitted review's comments cannot
be edited as a set, and GitHub refuses to delete a submitted review.
"""

from __future__ import annotations

from typing import Any, cast

from githubkit import GitHub

from devart.core.contracts import StageState
from devart.core.database import db
from devart.core.database.models import GitHubReview, GitHubRun, utcnow
from devart.domain.events import add_event
from devart.github import format as fmt
from devart.github.client import split_repo


async def post_review(gh: GitHub[Any], ctx: GitHubRun, stage: StageState, links: fmt.Links) -> None:
    """Post the review of this head commit, or update the one a previous run posted (replace it if its line
    comments differ: a submitted review's comments cannot be edited as a set)."""
    assert stage.result is not None
    owner, repo = split_repo(ctx.repo)
    comments = fmt.review_comments(stage.result.output.get("findings") or [])
    body = fmt.review_body(stage.name, stage.result, comments, links)
    mark = fmt.fingerprint(comments)
    async with db.session() as s:
        existing = await s.get(GitHubReview, (ctx.repo, ctx.pr, ctx.head_sha))
        previous = (existing.review_id, existing.fingerprint) if existing else None
    if previous and previous[1] == mark:
        await gh.rest.pulls.async_update_review(owner, repo, ctx.pr, previous[0], data={"body": body})
        review_id, action = previous[0], "updated"
    else:
        if previous:
            superseded = f"Superseded by a newer devart review of the same commit (run {ctx.run_id})."
            await gh.rest.pulls.async_update_review(owner, repo, ctx.pr, previous[0], data={"body": superseded})
        review = {"commit_id": ctx.head_sha, "body": body, "event": "COMMENT", "comments": comments}
        created = await gh.rest.pulls.async_create_review(owner, repo, ctx.pr, data=cast(Any, review))
        review_id, action = created.parsed_data.id, "replaced" if previous else "posted"
    async with db.session() as s:
        row = await s.get(GitHubReview, (ctx.repo, ctx.pr, ctx.head_sha))
        if row is None:
            s.add(GitHubReview(repo=ctx.repo, pr=ctx.pr, head_sha=ctx.head_sha, review_id=review_id,
                               run_id=ctx.run_id, fingerprint=mark))
        else:
            row.review_id, row.run_id, row.fingerprint, row.updated_at = review_id, ctx.run_id, mark, utcnow()
        add_event(s, "github.review", f"review {action} on {ctx.repo}#{ctx.pr} with {len(comments)} line comments",
                  run_id=ctx.run_id, stage=stage.name, review_id=review_id)

