-- Databases of the cloud stack (compose.yaml, service `mysql`). The mysql image runs this
-- once, on the first start with an empty data volume (mounted as
-- /docker-entrypoint-initdb.d/01-databases.sql); init-users.sh then creates the users,
-- whose passwords come from the environment (.env).
--
-- utf8mb4: full Unicode (experiment names, run names, MLflow tags). Binary collation:
-- names compare exactly as in SQLite, the registry's embedded default, so `trainer best
-- -e Reference` and `-e reference` mean different experiments on both backends.

CREATE DATABASE IF NOT EXISTS edgecp CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;  -- run registry (trainer, exporter)
CREATE DATABASE IF NOT EXISTS mlflow CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;  -- MLflow tracking server's backend store
