#!/bin/bash
# Users of the cloud stack's databases (compose.yaml, service `mysql`): `edgecp` owns the
# run registry, `mlflow` the tracking server's store. The mysql image runs this once, on
# the first start with an empty data volume, after 01-databases.sql (init.sql); the
# passwords come from the container's environment (EDGECP_DB_PASSWORD and
# MLFLOW_DB_PASSWORD in .env). Changing them in .env later does not change them here:
# use ALTER USER (adminer) or start from an empty volume (`docker compose down -v`).
# Sourced by the image's entrypoint, so it must not `exit` or change shell options.

: "${EDGECP_DB_PASSWORD:?EDGECP_DB_PASSWORD is not set}"
: "${MLFLOW_DB_PASSWORD:?MLFLOW_DB_PASSWORD is not set}"

# SQL string literal: double every single quote.
sql_quote() { printf "'%s'" "${1//\'/\'\'}"; }

MYSQL_PWD="$MYSQL_ROOT_PASSWORD" mysql --protocol=socket -uroot <<SQL
CREATE USER IF NOT EXISTS 'edgecp'@'%' IDENTIFIED BY $(sql_quote "$EDGECP_DB_PASSWORD");
GRANT ALL PRIVILEGES ON edgecp.* TO 'edgecp'@'%';
CREATE USER IF NOT EXISTS 'mlflow'@'%' IDENTIFIED BY $(sql_quote "$MLFLOW_DB_PASSWORD");
GRANT ALL PRIVILEGES ON mlflow.* TO 'mlflow'@'%';
SQL
