"""`conference backup` and `conference restore`: one archive with what an installation
cannot rebuild, except the media files.

An archive (``conference-backup-YYYYMMDD-HHMMSS.tar.gz``, gzip tar, mode 0600) holds:

``backup.json``
    the header, first: ``format`` (``conference-backup/1``), ``created_at``,
    ``server_version``, ``host``, ``schema_revision`` (the Alembic revision of the
    dump), ``database`` (``kind``: sqlite or postgresql, ``tables``: rows per table),
    ``token_secret`` (``file``, ``settings`` or ``none``: where the source took it
    from) and ``members`` (size and SHA-256 of every other member).
``database/<table>.jsonl``
    every row of the table as one JSON object per line, all tables read in one
    snapshot (:mod:`conference.backup.database`); datetimes as ISO 8601 (naive UTC, as
    stored), so a dump of SQLite restores into PostgreSQL and back.
``keys/secret.key``, ``keys/recording.key``, ``keys/recording.key.pub``, ``keys/tls/self-signed.crt``, ``keys/tls/self-signed.key``
    the token secret, the recordings' signing key and the self-signed certificate,
    where the installation has them.
``audit/audit.log`` (and ``audit/audit.log-20261201.gz``...)
    the recordings audit log (up to its last complete line), and the files logrotate
    made of it beside it.
``recordings/YYYY/MM/<meeting>/<start>.manifest.json`` (and ``.compose.json``)
    every recording manifest and composition state; the media files beside them are
    large and written once: copied with rsync, not archived.

The modules: :mod:`.archive` (the members, writing, reading back with every path
checked), :mod:`.database` (the rows), :mod:`.service` (what is backed up and restored,
and the rules for files already present), :mod:`.cli` (the two commands).
"""
