"""The store's schema revisions, applied in order by Alembic (through bot.infra.migrations.upgrade).

Hand-written, one file per revision: 0001_initial is the schema as the bot created it before Alembic
(commit a8443bc), 0002_authorization adds the incidents' authorization columns. A new column or table is a
new revision here plus the same change to bot.infra.store's metadata (tests/test_migrations.py compares them).
This `__init__.py` makes the directory a package, so setuptools ships the revision files in the wheel.
"""
