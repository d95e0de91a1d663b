-- People, their LTI identities, courses and groups (the people part).
CREATE TABLE people (
    id            bigserial PRIMARY KEY,
    -- the current address; NULL when the LMS did not share one
    email         text,
    display_name  text NOT NULL DEFAULT '',
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX people_email ON people (lower(email));

CREATE TABLE lti_identities (
    consumer_key  text NOT NULL,
    user_id       text NOT NULL,
    person_id     bigint NOT NULL REFERENCES people (id) ON DELETE CASCADE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_key, user_id)
);
CREATE INDEX lti_identities_person ON lti_identities (person_id);

CREATE TABLE courses (
    id            bigserial PRIMARY KEY,
    -- LTI consumer key and context_id; '' and a name for courses made by hand
    consumer_key  text NOT NULL DEFAULT '',
    context_id    text NOT NULL,
    title         text NOT NULL DEFAULT '',
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (consumer_key, context_id)
);

CREATE TABLE course_members (
    course_id       bigint NOT NULL REFERENCES courses (id) ON DELETE CASCADE,
    person_id       bigint NOT NULL REFERENCES people (id) ON DELETE CASCADE,
    -- LTI roles as sent (e.g. Learner, Instructor, urn:lti:role:ims/lis/…)
    roles           text[] NOT NULL DEFAULT '{}',
    joined_at       timestamptz NOT NULL DEFAULT now(),
    last_launch_at  timestamptz,
    PRIMARY KEY (course_id, person_id)
);
CREATE INDEX course_members_person ON course_members (person_id);

CREATE TABLE groups (
    id          bigserial PRIMARY KEY,
    course_id   bigint NOT NULL REFERENCES courses (id) ON DELETE CASCADE,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (course_id, name)
);

CREATE TABLE group_members (
    group_id    bigint NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    person_id   bigint NOT NULL REFERENCES people (id) ON DELETE CASCADE,
    joined_at   timestamptz NOT NULL DEFAULT now(),
    -- set when they leave; their relay address stops working
    left_at     timestamptz,
    PRIMARY KEY (group_id, person_id)
);
CREATE INDEX group_members_person ON group_members (person_id);
